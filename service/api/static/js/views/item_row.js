// One item of the list: shown read-only unless it is yours; yours can be completed, edited
// and deleted. Updated in place (never rebuilt) so focus and an open editor survive events.

import { api, explain } from "../api.js";
import { ago, clearErrors, field, h, showApiError, when } from "../dom.js";
import { describe } from "./attachments.js";

export function itemRow(item, { me, onToggle, onDelete, onSaved }) {
  const mine = item.owner_id === me;
  const done = h("input", { type: "checkbox", disabled: !mine });
  const check = h(
    "label",
    { class: "check", title: mine ? "" : "Only the owner can change this item" },
    done,
    h("span", { class: "sr-only" }, "Done"),
  );
  const title = h("span", { class: "title" });
  const badge = h("span", { class: "badge" });
  const desc = h("p", { class: "desc" });
  const files = h("p", { class: "files" });
  const time = h("time");
  const meta = h(
    "p",
    { class: "meta" },
    h("span", {}, `#${item.id}`),
    h(
      "span",
      { class: mine ? "owner mine" : "owner" },
      mine ? "yours" : `by user ${item.owner_id} · read-only`,
    ),
    time,
  );
  const error = h("p", { class: "item-error", role: "alert", hidden: true });
  const body = h(
    "div",
    { class: "body" },
    h("div", { class: "head" }, title, badge),
    desc,
    files,
    meta,
    error,
  );
  const editButton = mine && h("button", { type: "button", class: "btn ghost small" }, "Edit");
  const deleteButton =
    mine && h("button", { type: "button", class: "btn ghost small danger" }, "Delete");
  const actions = mine && h("div", { class: "item-actions" }, editButton, deleteButton);
  const li = h("li", { class: "item", "data-id": item.id }, check, body, actions);
  let current = item;
  let editor = null;

  function showError(message) {
    error.textContent = message || "";
    error.hidden = !message;
  }

  function update(view) {
    current = view;
    const completed = view.status === "completed";
    li.classList.toggle("done", completed);
    done.checked = completed;
    title.textContent = view.title;
    badge.textContent = view.priority > 0 ? `P${view.priority}` : "";
    badge.hidden = view.priority === 0;
    const { text, links } = describe(view.description);
    desc.textContent = text;
    desc.hidden = !text;
    files.replaceChildren(...links);
    files.hidden = !links.length;
    time.dateTime = view.updated_at;
    time.title = `Created ${when(view.created_at)} · version ${view.version}`;
    refreshTime();
  }

  function refreshTime() {
    const edited = current.version > 1 ? "edited " : "";
    time.textContent = edited + ago(current.version > 1 ? current.updated_at : current.created_at);
  }

  done.addEventListener("change", () => {
    showError("");
    onToggle(current, done.checked ? "completed" : "active").catch((e) => showError(explain(e)));
  });

  if (mine) {
    deleteButton.addEventListener("click", () => {
      showError("");
      onDelete(current).catch((e) => showError(explain(e)));
    });
    editButton.addEventListener("click", () => openEditor());
  }

  function openEditor() {
    const base = current;
    const t = field("Title", h("input", { name: "title", value: base.title, autocomplete: "off" }));
    const d = field("Description", h("textarea", { name: "description", rows: 3 }));
    d.input.value = base.description;
    const p = field(
      "Priority",
      h("input", {
        name: "priority",
        type: "number",
        min: 0,
        max: 100,
        value: String(base.priority),
      }),
      {
        className: "field narrow",
      },
    );
    const general = h("p", { class: "form-error", role: "alert", hidden: true });
    const save = h("button", { type: "submit", class: "btn primary small" }, "Save");
    const cancel = h("button", { type: "button", class: "btn ghost small" }, "Cancel");
    const fields = { title: t, description: d, priority: p };
    let version = base.version;
    editor = h(
      "form",
      { class: "editor", novalidate: true, "aria-label": `Edit item ${base.id}` },
      t.wrap,
      d.wrap,
      p.wrap,
      general,
      h("div", { class: "actions" }, save, cancel),
    );
    editor.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearErrors(fields, general);
      const raw = p.input.value.trim();
      const changes = { title: t.input.value, description: d.input.value };
      if (raw) changes.priority = /^\d+$/.test(raw) ? Number(raw) : raw;
      save.disabled = true;
      try {
        const saved = await api.update(base.id, changes, version);
        closeEditor();
        onSaved(saved);
      } catch (e) {
        // Saved over someone's newer change? Take their version as the base and let the
        // person look again before saving.
        if (e.status === 412) version = current.version;
        showApiError(e, fields, general, explain);
      } finally {
        save.disabled = false;
      }
    });
    cancel.addEventListener("click", closeEditor);
    editor.addEventListener("keydown", (e) => e.key === "Escape" && closeEditor());
    body.hidden = true;
    actions.hidden = true;
    li.classList.add("editing");
    li.insertBefore(editor, actions);
    t.input.focus();
  }

  function closeEditor() {
    editor?.remove();
    editor = null;
    body.hidden = false;
    actions.hidden = false;
    li.classList.remove("editing");
    editButton.focus();
  }

  update(item);
  return { li, update, refreshTime };
}
