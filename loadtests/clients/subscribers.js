// One subscriber process of `python -m loadtests.fanout`: holds many subscriptions of the
// kinds asked for, records for every event its seq and receive time, and reports counts and a
// commit->receipt latency histogram. Driven over stdin/stdout (see commands.js):
//
//   {"cmd": "open", "kind": "sse"|"ws"|"sio", "n": N, "targets": [{"host", "port"}, ...],
//    "token": T, "concurrency": C, "timeout_ms": MS}   N more subscriptions (targets in turn)
//   {"cmd": "arm", "lo": SEQ}       start a measured window: count seqs > SEQ from now on
//   {"cmd": "drain", "hi": SEQ, "expected": E, "timeout_ms": MS}
//                                   wait until every open subscription has E distinct seqs in
//                                   (lo, hi] (or the time is up), then report the window
//   {"cmd": "resume", "concurrency": C, "timeout_ms": MS}
//                                   reopen streams the server ended, from their last seq
//   {"cmd": "status"}  {"cmd": "reset"} (close and forget all)  {"cmd": "close"}
//
// Every wait is bounded by the timeout the command carries.
"use strict";

const { cpuSeconds, nowMs, serve, sleep } = require("./commands");
const { SSE, WebSocketJSON } = require("./duckcast");
const { Histogram } = require("./latency");
const { Tally } = require("./tally");

const KINDS = {
  sse: (pool, target) => new SSE(pool, target),
  ws: (pool, target) => new WebSocketJSON(pool, target),
  // loaded on first use: it needs loadtests/peer/node_modules, Duckcast's kinds need nothing
  sio: (pool, target) => new (require("./socketio").SocketIO)(pool, target),
};

class Pool {
  constructor() {
    this.subs = [];
    this.token = "";
    this.failures = {};
    this.arm(0);
  }

  arm(lo) {
    this.lo = lo;
    this.latency = new Histogram();
    this.commits = new Map(); // seq -> commit time (ms), parsed once per process
    this.firstReceipt = null;
    this.lastReceipt = null;
    for (const sub of this.subs) sub.tally.arm(lo);
  }

  deliver(sub, seq, commitMs, now) {
    if (!sub.tally.see(seq)) return;
    if (commitMs !== undefined) this.latency.add(now - commitMs);
    if (this.firstReceipt === null) this.firstReceipt = now;
    this.lastReceipt = now;
  }

  async openMany(jobs, concurrency, timeoutMs) {
    const started = nowMs();
    let opened = 0;
    let next = 0;
    const worker = async () => {
      while (next < jobs.length) {
        const [sub, since] = jobs[next++];
        try {
          await sub.open(timeoutMs, since);
          opened += 1;
        } catch (err) {
          const key = `${sub.kind}: ${String(err.message || err).slice(0, 80)}`;
          this.failures[key] = (this.failures[key] || 0) + 1;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker));
    return { opened, failed: jobs.length - opened, ms: nowMs() - started };
  }

  status() {
    const byKind = {};
    const closed = {};
    const ends = {};
    for (const sub of this.subs) {
      const k = (byKind[sub.kind] ??= { held: 0, open: 0 });
      k.held += 1;
      if (sub.closed === null) k.open += 1;
      else closed[sub.closed] = (closed[sub.closed] || 0) + 1;
      for (const reason of sub.ends) {
        if (reason !== "closed by client") ends[reason] = (ends[reason] || 0) + 1;
      }
    }
    return {
      pid: process.pid,
      held: this.subs.length,
      open: this.subs.filter((s) => s.closed === null).length,
      by_kind: byKind,
      closed,
      ends,
      failures: this.failures,
      cpu_seconds: cpuSeconds(),
      rss_kb: Math.round(process.memoryUsage().rss / 1024),
    };
  }

  window(hi, expected) {
    const byKind = {};
    let missingOpen = 0;
    for (const sub of this.subs) {
      const t = sub.tally;
      const k = (byKind[sub.kind] ??= {
        subs: 0,
        open: 0,
        received: 0,
        unique: 0,
        beyond: 0,
        lost: 0,
        dups: 0,
        out_of_order: 0,
        early: 0,
      });
      const unique = t.uniqueUpTo(hi);
      const lost = Math.max(0, expected - unique);
      k.subs += 1;
      k.received += t.received;
      k.unique += unique;
      k.beyond += t.unique - unique;
      k.lost += lost;
      k.dups += t.dups;
      k.out_of_order += t.outOfOrder;
      k.early += t.early;
      if (sub.closed === null) {
        k.open += 1;
        missingOpen += lost;
      }
    }
    return {
      ...this.status(),
      lo: this.lo,
      hi,
      expected,
      window: byKind,
      missing_open: missingOpen,
      latency: this.latency.toJSON(),
      first_receipt: this.firstReceipt,
      last_receipt: this.lastReceipt,
    };
  }
}

const pool = new Pool();

serve({
  async open({ kind, n, targets, token, concurrency, timeout_ms: timeoutMs }) {
    const make = KINDS[kind];
    if (make === undefined) throw new Error(`unknown kind ${kind}`);
    pool.token = token || "";
    const jobs = [];
    for (let i = 0; i < n; i++) {
      const stream = make(pool, targets[i % targets.length]);
      stream.tally = new Tally(pool.lo);
      jobs.push([stream, 0]);
    }
    const result = await pool.openMany(jobs, concurrency, timeoutMs);
    for (const [sub] of jobs) {
      if (!sub.closed || !sub.closed.startsWith("failed")) pool.subs.push(sub);
    }
    return { ...result, ...pool.status() };
  },

  async arm({ lo }) {
    pool.arm(lo);
    return { lo };
  },

  async drain({ hi, expected, timeout_ms: timeoutMs }) {
    const started = nowMs();
    const deadline = started + timeoutMs;
    // cheap test first: a subscriber short of `expected` seqs in all cannot have them <= hi
    const behind = () =>
      pool.subs.some(
        (s) =>
          s.closed === null && (s.tally.unique < expected || s.tally.uniqueUpTo(hi) < expected),
      );
    while (behind() && nowMs() < deadline) await sleep(20);
    return { ...pool.window(hi, expected), drained: !behind(), waited_ms: nowMs() - started };
  },

  async resume({ concurrency, timeout_ms: timeoutMs }) {
    const jobs = pool.subs.filter((s) => s.resumable).map((s) => [s, s.tally.last]);
    // Replayed events are old by design: keep them out of the live latency figures.
    pool.latency = new Histogram();
    const result = await pool.openMany(jobs, concurrency, timeoutMs);
    return { resumable: jobs.length, ...result };
  },

  async status() {
    return pool.status();
  },

  async reset() {
    for (const sub of pool.subs) sub.close();
    pool.subs = [];
    pool.failures = {};
    await sleep(200); // let the closes go out before the next measurement
    return pool.status();
  },

  async close() {
    const summary = pool.status();
    for (const sub of pool.subs) sub.close();
    await sleep(200);
    return summary;
  },
});
