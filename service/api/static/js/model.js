// The item list one page shows: a snapshot (GET /api/items with its `seq`) with the change
// events after it applied on top, and the caller's own writes merged in. Pure state, no DOM:
// tests/browser/test_model.py runs these rules in Chromium.
//
// The rules, each with a reason:
// - An event at or below `seq` is already in the snapshot: skipped (snapshot, then stream).
// - An item is replaced only by a higher `version`: the answer to our own write and the event
//   for it carry the same version, so whichever comes second changes nothing (no duplicate,
//   no flicker), and a late event cannot undo a newer state.
// - An item that no longer matches the filters leaves the list; one that starts to match
//   enters it (the server sends an event when the item matched before or after the change).
// - The list is one page of a list ordered by id, newest first: an event is applied only to
//   ids inside that page's window. Page 1 is open above (creates appear at the top).
// - An item we deleted never comes back, even from an older event or snapshot still in flight.
// - An optimistic change (the Done checkbox) is an overlay shown until its answer arrives.

export class ItemList {
  constructor({ status = null, ownerId = null, q = "" } = {}) {
    this.filters = { status, ownerId, q: q.trim().toLowerCase() };
    this.items = new Map();
    this.pending = new Map();
    this.deleted = new Set();
    this.seq = 0;
    this.page = 1;
    this.pages = 1;
    this.limit = 20;
    this.total = 0;
    this.ceiling = Infinity; // highest id in the window (page 1: no bound)
    this.floor = 0; // lowest id in the window (0: the page reaches the end of the list)
    this.buffer = null; // events that arrive while a snapshot is loading
  }

  matches(item) {
    const { status, ownerId, q } = this.filters;
    if (status && item.status !== status) return false;
    if (ownerId != null && item.owner_id !== ownerId) return false;
    return !q || item.title.toLowerCase().includes(q);
  }

  inWindow(id) {
    return id <= this.ceiling && id >= this.floor;
  }

  // Events that arrive from now until snapshot() are held, then applied if newer than it.
  beginSnapshot() {
    this.buffer = [];
  }

  snapshot(page) {
    this.items.clear();
    this.seq = page.seq;
    this.page = page.page;
    this.pages = Math.max(page.pages, 1);
    this.limit = page.limit;
    this.total = page.total;
    const ids = page.items.map((it) => it.id);
    this.ceiling = page.page === 1 || !ids.length ? Infinity : ids[0];
    this.floor = page.page >= page.pages || !ids.length ? 0 : ids[ids.length - 1];
    for (const item of page.items) this.upsert(item);
    const held = this.buffer || [];
    this.buffer = null;
    for (const [type, seq, data] of held) this.apply(type, seq, data);
  }

  // One change event; `seq` is its SSE id. Returns whether the list changed.
  apply(type, seq, data) {
    if (this.buffer) {
      this.buffer.push([type, seq, data]);
      return false;
    }
    if (seq <= this.seq) return false;
    this.seq = seq;
    if (type === "item_deleted") return this.remove(data.id);
    if (!this.inWindow(data.id)) return false;
    return this.upsert(data);
  }

  // An item as the API answered it (our own create or update), or from an event.
  upsert(item) {
    if (this.deleted.has(item.id)) return false;
    const known = this.items.get(item.id);
    if (known && known.version >= item.version) return false;
    if (!this.matches(item)) return this.remove(item.id);
    if (!known && this.page === 1 && this.items.size >= this.limit && !this.makeRoom(item.id)) {
      return false;
    }
    this.items.set(item.id, item);
    return true;
  }

  // Page 1 keeps its size as items are created: the oldest moves on to page 2, and an item
  // older than every one shown belongs there already.
  makeRoom(incoming) {
    const oldest = Math.min(...this.items.keys());
    this.pages = Math.max(this.pages, 2);
    if (incoming < oldest) {
      this.floor = oldest;
      return false;
    }
    this.items.delete(oldest);
    this.floor = Math.min(...this.items.keys(), incoming);
    return true;
  }

  remove(id) {
    this.pending.delete(id);
    return this.items.delete(id);
  }

  // We deleted it (optimistically): gone for good, whatever arrives later.
  forget(id) {
    this.deleted.add(id);
    return this.remove(id);
  }

  // An undone optimistic delete (the request failed): the item may be shown again.
  restore(item) {
    this.deleted.delete(item.id);
    return this.upsert(item);
  }

  setPending(id, fields) {
    this.pending.set(id, fields);
  }

  clearPending(id) {
    this.pending.delete(id);
  }

  // What to show for an item: its state with any optimistic change on top.
  view(id) {
    const item = this.items.get(id);
    return item && { ...item, ...this.pending.get(id) };
  }

  // Ids newest first, as the API orders them.
  ordered() {
    return [...this.items.keys()].sort((a, b) => b - a);
  }

  get hasOlder() {
    return this.floor > 0;
  }
}
