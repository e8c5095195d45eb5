// GET /api/events as a resumable stream of change events, with a connection state to show.
//
// EventSource resumes by itself after a dropped connection, sending Last-Event-ID (the last
// `id:` it saw). It gives up for good on an HTTP error (a 503 while the service restarts, a
// 401): then we open a new one, resuming through ?last_event_id= from the last seq we saw.

const EVENTS = ["item_created", "item_updated", "item_deleted"];
const MAX_BACKOFF_MS = 5000;

export class LiveStream {
  // since: the seq of the snapshot the caller holds; filters: {owner_id, status} or empty.
  constructor({ since, filters, onEvent, onReset, onState, onSessionEnded }) {
    this.lastSeq = since;
    this.filters = filters;
    this.onEvent = onEvent;
    this.onReset = onReset;
    this.onState = onState;
    this.onSessionEnded = onSessionEnded;
    this.source = null;
    this.retryTimer = null;
    this.backoff = 500;
    this.closed = false;
    this.state = null;
    // The browser knows when it has no network at all; EventSource then reconnects by itself.
    this.network = () => {
      if (!navigator.onLine) this.setState("offline");
      else if (this.state === "offline") this.setState("reconnecting");
    };
    window.addEventListener("online", this.network);
    window.addEventListener("offline", this.network);
    this.open();
  }

  url() {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(this.filters))
      if (value != null) params.set(key, value);
    params.set("last_event_id", String(this.lastSeq));
    return `/api/events?${params}`;
  }

  open() {
    const source = new EventSource(this.url());
    this.source = source;
    source.addEventListener("connected", () => {
      this.backoff = 500;
      this.setState("live");
    });
    for (const type of EVENTS) {
      source.addEventListener(type, (e) => {
        const seq = Number(e.lastEventId);
        this.lastSeq = Math.max(this.lastSeq, seq);
        this.onEvent(type, seq, JSON.parse(e.data));
      });
    }
    // The log no longer reaches back to where we were: reload, then carry on from its id.
    source.addEventListener("reset", (e) => {
      if (e.lastEventId) this.lastSeq = Number(e.lastEventId);
      this.onReset();
    });
    source.addEventListener("expired", () => {
      this.close();
      this.onSessionEnded();
    });
    // The server drops a subscriber that fell behind; EventSource comes back with its last id.
    source.addEventListener("overflow", () => this.setState("reconnecting"));
    source.addEventListener("error", () => {
      if (this.closed) return;
      this.setState(navigator.onLine ? "reconnecting" : "offline");
      if (source.readyState === EventSource.CLOSED) this.retry();
    });
  }

  async retry() {
    this.source?.close();
    clearTimeout(this.retryTimer);
    const delay = this.backoff;
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
    this.retryTimer = setTimeout(async () => {
      if (this.closed) return;
      // A refused stream may be an ended session rather than a restarting service.
      const me = await fetch("/api/me", { credentials: "same-origin" }).catch(() => null);
      if (this.closed) return;
      if (me && me.status === 401) {
        this.close();
        this.onSessionEnded();
        return;
      }
      this.open();
    }, delay);
  }

  setState(state) {
    if (state === this.state || this.closed) return;
    this.state = state;
    this.onState(state);
  }

  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.source?.close();
    window.removeEventListener("online", this.network);
    window.removeEventListener("offline", this.network);
  }
}
