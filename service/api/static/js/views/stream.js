// The protobuf view: GET /ws/items in binary frames, each a DomainEvent decoded here in the
// browser against the served duckcast.proto, newest first.

import { h, when } from "../dom.js";
import { decode, schema, timestamp } from "../proto.js";

const KEEP = 200; // events kept on screen
const MAX_BACKOFF_MS = 5000;
const UNAUTHORIZED = 4401;
const POLICY = 1008;

export function streamView(root, app) {
  const list = h("ol", { class: "events", "aria-label": "Events" });
  const empty = h(
    "div",
    { class: "empty" },
    h("strong", {}, "Waiting for changes…"),
    h(
      "span",
      {},
      "Create or edit an item (here, in another tab, or through the API) and its event appears.",
    ),
  );
  const info = h("p", { class: "lede" });
  const counter = h("span", { class: "counter" }, "0 events");
  let socket = null;
  let lastSeq = null;
  let received = 0;
  let backoff = 500;
  let retryTimer = null;
  let closed = false;

  root.append(
    h(
      "section",
      { class: "stream-view" },
      h(
        "div",
        { class: "stream-head" },
        h("div", {}, h("h1", {}, "Protobuf stream"), info),
        counter,
      ),
      empty,
      list,
    ),
  );

  function connect(DomainEvent, protobuf) {
    const params = new URLSearchParams();
    if (lastSeq !== null) params.set("since", String(lastSeq));
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(
      `${scheme}://${location.host}/ws/items${params.size ? `?${params}` : ""}`,
    );
    socket.binaryType = "arraybuffer";
    app.setConnection(lastSeq === null ? "connecting" : "reconnecting");
    socket.addEventListener("open", () => {
      backoff = 500;
      app.setConnection("live");
    });
    socket.addEventListener("message", (message) => {
      if (!(message.data instanceof ArrayBuffer)) return;
      const bytes = new Uint8Array(message.data);
      const event = decode(protobuf, DomainEvent, bytes);
      lastSeq = event.seq;
      show(event, bytes.length);
    });
    socket.addEventListener("close", (e) => {
      if (closed) return;
      if (e.code === UNAUTHORIZED) {
        app.sessionEnded();
        return;
      }
      if (e.code === POLICY) {
        app.setConnection("offline");
        info.textContent = `The server refused the stream: ${e.reason || "policy"}.`;
        return;
      }
      app.setConnection(navigator.onLine ? "reconnecting" : "offline");
      retryTimer = setTimeout(() => connect(DomainEvent, protobuf), backoff);
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    });
  }

  function show(event, size) {
    received += 1;
    counter.textContent = `${received} event${received === 1 ? "" : "s"}`;
    empty.hidden = true;
    const item = event.item;
    const subject =
      event.type === "RESET"
        ? "The log no longer reaches back that far: clients reload their list."
        : item
          ? item.title
          : `#${event.deleted_id}`;
    const updated = item && timestamp(item.updated_at);
    const stats = event.stats;
    const li = h(
      "li",
      { class: `event type-${event.type.toLowerCase()}` },
      h("span", { class: "type" }, event.type),
      h(
        "div",
        { class: "what" },
        h("strong", { class: "subject" }, subject),
        h(
          "span",
          { class: "detail" },
          item
            ? `item #${item.id} · ${item.status} · v${item.version} · owner ${item.owner_id}${updated ? ` · ${when(updated)}` : ""}`
            : "",
        ),
      ),
      h(
        "div",
        { class: "numbers" },
        h("span", {}, `seq ${event.seq}`),
        h("span", {}, `${size} bytes`),
        stats ? h("span", {}, `${stats.total} items · ${stats.active} active`) : null,
      ),
    );
    list.prepend(li);
    while (list.childElementCount > KEEP) list.lastElementChild.remove();
  }

  schema()
    .then(({ protobuf, root: protoRoot }) => {
      if (closed) return;
      const DomainEvent = protoRoot.lookupType("duckcast.v1.DomainEvent");
      info.textContent = `Binary frames from /ws/items, each a ${DomainEvent.fullName.slice(1)} decoded with protobuf.js against /protos/duckcast.proto.`;
      connect(DomainEvent, protobuf);
    })
    .catch((error) => {
      app.setConnection("offline");
      info.textContent = `The schema could not be loaded: ${error.message}`;
    });

  return {
    unmount() {
      closed = true;
      clearTimeout(retryTimer);
      socket?.close();
    },
  };
}
