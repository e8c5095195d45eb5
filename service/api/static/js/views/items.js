// The live item list: a page of GET /api/items (with its seq), then the change events after
// that seq from GET /api/events, applied by ItemList's rules (model.js).

import { api, explain } from "../api.js";
import { field, h } from "../dom.js";
import { LiveStream } from "../live.js";
import { ItemList } from "../model.js";
import { createForm } from "./create_form.js";
import { itemRow } from "./item_row.js";
import { statsPanel } from "./stats.js";

const PAGE_SIZE = 20;
const SEARCH_DELAY_MS = 250;

export function itemsView(root, app) {
  const me = app.user.id;
  const filters = { status: null, mine: false, q: "" };
  const deleted = new Set(); // ids we deleted: kept across pages and filters
  const rows = new Map(); // id -> {row, shown}
  let model = null; // the list being shown, or being loaded while events buffer into it
  let stream = null;
  let loads = 0;

  const stats = statsPanel();
  const notice = h("p", { class: "notice", "aria-live": "polite", hidden: true });
  const list = h("ul", { class: "items", role: "list", "aria-label": "Items" });
  const empty = h("div", { class: "empty", hidden: true });
  const newer = h("button", { type: "button", class: "btn small" }, "Newer");
  const older = h("button", { type: "button", class: "btn small" }, "Older");
  const position = h("span", { class: "position" });
  const pager = h(
    "nav",
    { class: "pager", "aria-label": "Pages", hidden: true },
    newer,
    position,
    older,
  );
  const search = field(
    "Search",
    h("input", {
      type: "search",
      name: "q",
      placeholder: "Titles containing…",
      autocomplete: "off",
    }),
    {
      className: "field search",
    },
  );
  const statusChoice = h(
    "fieldset",
    { class: "segmented" },
    h("legend", { class: "sr-only" }, "Status"),
    ...[
      ["", "All"],
      ["active", "Active"],
      ["completed", "Completed"],
    ].map(([value, label]) =>
      h(
        "label",
        {},
        h("input", { type: "radio", name: "status", value, checked: value === "" }),
        h("span", {}, label),
      ),
    ),
  );
  const mineToggle = h(
    "label",
    { class: "switch" },
    h("input", { type: "checkbox", name: "mine" }),
    h("span", {}, "Only mine"),
  );
  const toolbar = h("div", { class: "toolbar" }, search.wrap, statusChoice, mineToggle);

  const rowHandlers = {
    me,
    async onToggle(item, status) {
      model.setPending(item.id, { status });
      render();
      try {
        model.upsert(await api.update(item.id, { status }));
      } finally {
        model.clearPending(item.id);
        render();
        stats.refreshSoon();
      }
    },
    async onDelete(item) {
      model.forget(item.id);
      render();
      try {
        await api.remove(item.id);
      } catch (error) {
        if (error.status !== 404) {
          model.restore(item);
          say(`Could not delete “${item.title}”: ${explain(error)}`);
        }
      } finally {
        render();
        stats.refreshSoon();
      }
    },
    onSaved(item) {
      model.upsert(item);
      render();
      stats.refreshSoon();
    },
  };

  function onCreated(item) {
    stats.refreshSoon();
    if (!model || model.page !== 1) {
      load(1, false);
      return;
    }
    if (!model.matches(item)) {
      say(`Added “${item.title}”. The current filters hide it.`);
      return;
    }
    model.upsert(item);
    render();
  }

  function say(text) {
    notice.textContent = text;
    notice.hidden = !text;
  }

  function newModel() {
    const m = new ItemList({
      status: filters.status,
      ownerId: filters.mine ? me : null,
      q: filters.q,
    });
    m.deleted = deleted;
    return m;
  }

  // Loads one page as the new snapshot. With `reopen` (first load, other stream filters) the
  // stream is opened afresh from the snapshot's seq; otherwise it stays open and its events
  // wait in the new list until the snapshot is in.
  async function load(page, reopen) {
    const token = ++loads;
    reopen ||= stream === null;
    if (reopen) {
      stream?.close();
      stream = null;
      app.setConnection("connecting");
    }
    const next = newModel();
    if (!reopen) {
      next.beginSnapshot();
      model = next;
    }
    const params = { page, limit: PAGE_SIZE };
    if (filters.status) params.status = filters.status;
    if (filters.mine) params.owner_id = me;
    if (filters.q.trim()) params.q = filters.q.trim();
    try {
      const snapshot = await api.items(params);
      if (token !== loads) return;
      model = next;
      model.snapshot(snapshot);
      say("");
      render();
      if (reopen) openStream(snapshot.seq);
    } catch (error) {
      if (token !== loads) return;
      if (error.status === 401) {
        app.sessionEnded();
        return;
      }
      stream?.close();
      stream = null;
      app.setConnection(navigator.onLine ? "reconnecting" : "offline");
      say(`The list could not be loaded: ${explain(error)} Retrying…`);
      setTimeout(() => token === loads && load(page, true), 2000);
    }
  }

  function openStream(since) {
    stream = new LiveStream({
      since,
      filters: { owner_id: filters.mine ? me : null, status: filters.status },
      onEvent(type, seq, data) {
        if (model.apply(type, seq, data)) render();
        showSeq();
        stats.refreshSoon();
      },
      onReset: () => load(model.page, false),
      onState(state) {
        app.setConnection(state);
        if (state === "live") stats.refreshSoon();
      },
      onSessionEnded: () => app.sessionEnded(),
    });
  }

  // The seq the list reflects, for anyone who needs to know how far it has got (the tests).
  function showSeq() {
    if (!model.buffer) list.dataset.seq = String(model.seq);
  }

  // Brings the DOM in line with the model, moving and updating rows in place.
  function render() {
    if (!model || model.buffer) return;
    showSeq();
    const ids = model.ordered();
    for (const [id, entry] of rows) {
      if (!model.items.has(id)) {
        entry.row.li.remove();
        rows.delete(id);
      }
    }
    let previous = null;
    for (const id of ids) {
      const view = model.view(id);
      const shown = `${view.version}:${view.status}`;
      let entry = rows.get(id);
      if (!entry) {
        entry = { row: itemRow(view, rowHandlers), shown };
        if (list.childElementCount) entry.row.li.classList.add("fresh");
        rows.set(id, entry);
      } else if (entry.shown !== shown) {
        entry.row.update(view);
        entry.shown = shown;
      }
      const expected = previous ? previous.nextElementSibling : list.firstElementChild;
      if (entry.row.li !== expected) list.insertBefore(entry.row.li, expected);
      previous = entry.row.li;
    }
    const filtered = filters.status || filters.mine || filters.q.trim();
    empty.replaceChildren(
      h("strong", {}, filtered ? "Nothing matches." : "No items yet."),
      h(
        "span",
        {},
        filtered
          ? "Try other filters or another search."
          : "Add the first one: everyone here sees it appear.",
      ),
    );
    empty.hidden = ids.length > 0;
    pager.hidden = model.page === 1 && !model.hasOlder;
    newer.disabled = model.page === 1;
    older.disabled = !model.hasOlder;
    position.textContent = `Page ${model.page} of ${Math.max(model.pages, model.page)}`;
  }

  let searchTimer = null;
  search.input.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      filters.q = search.input.value;
      load(1, false);
    }, SEARCH_DELAY_MS);
  });
  statusChoice.addEventListener("change", (e) => {
    filters.status = e.target.value || null;
    load(1, true);
  });
  mineToggle.addEventListener("change", (e) => {
    filters.mine = e.target.checked;
    load(1, true);
  });
  newer.addEventListener("click", () => load(model.page - 1, false));
  older.addEventListener("click", () => load(model.page + 1, false));
  const clock = setInterval(() => rows.forEach(({ row }) => row.refreshTime()), 30000);

  root.append(
    h(
      "div",
      { class: "layout" },
      h("aside", { class: "side" }, stats.el, createForm(onCreated)),
      h(
        "section",
        { class: "main", "aria-label": "Item list" },
        toolbar,
        notice,
        list,
        empty,
        pager,
      ),
    ),
  );
  load(1, true);
  stats.refreshSoon();

  return {
    unmount() {
      loads++;
      stream?.close();
      stats.stop();
      clearInterval(clock);
      clearTimeout(searchTimer);
    },
  };
}
