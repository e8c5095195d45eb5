// The writer of `python -m loadtests.fanout`: POSTs at a steady rate (open loop) over a pool
// of keep-alive connections, to Duckcast (`POST /api/items`) or to the peer (`POST /write`,
// the two peer processes in turn). Driven over stdin/stdout (see commands.js):
//
//   {"cmd": "run", "system": "duckcast"|"peer", "targets": [{"host", "port"}, ...],
//    "token": T, "rate": R, "count": N, "senders": S, "seq_start": K}
//   {"cmd": "close"}
//
// Write i is due at start + i/R. `ack` = answer time - due time, so a write that waited for a
// free connection counts its wait. At most S writes are in flight (the agent queues the rest,
// in order): when R x latency exceeds S the service is saturated and the achieved rate drops.
"use strict";

const http = require("node:http");
const { nowMs, serve, sleep } = require("./commands");
const { Histogram } = require("./latency");

// Generous: a write the writer gives up on may still commit later, and the benchmark would
// then not know whether to expect its event. Overloaded servers answer in tens of seconds.
const REQUEST_TIMEOUT_MS = 120_000;
const FINAL_WAIT_MS = 150_000;

function request(agent, target, method, path, headers, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: target.host, port: target.port, method, path, headers, agent },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, body: Buffer.concat(chunks) }));
        res.on("error", reject);
      },
    );
    req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error("timeout")));
    req.on("error", reject);
    req.end(body);
  });
}

function writeFor(system, token, seqStart) {
  if (system === "duckcast") {
    const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
    return {
      warm: { path: "/api/me", headers: { authorization: `Bearer ${token}` } },
      make: (i) => ({
        path: "/api/items",
        headers,
        body: JSON.stringify({ title: `fanout ${i}`, description: "loadtests.fanout" }),
      }),
    };
  }
  const headers = { "content-type": "application/json" };
  return {
    warm: { path: "/readyz", headers: {} },
    make: (i) => ({
      path: "/write",
      headers,
      body: JSON.stringify({
        seq: seqStart + i,
        title: `fanout ${i}`,
        description: "loadtests.fanout",
      }),
    }),
  };
}

async function run({ system, targets, token, rate, count, senders, seq_start: seqStart }) {
  const agent = new http.Agent({
    keepAlive: true,
    maxSockets: senders,
    maxTotalSockets: senders,
    scheduling: "fifo",
  });
  const writes = writeFor(system, token, seqStart);
  const errors = {};
  const ack = new Histogram();
  let ok = 0;
  let done = 0;
  let lastAck = null;
  const fail = (key) => {
    errors[key] = (errors[key] || 0) + 1;
  };
  // Every connection open before the clock starts.
  await Promise.all(
    Array.from({ length: senders }, (_, i) =>
      request(agent, targets[i % targets.length], "GET", writes.warm.path, writes.warm.headers),
    ),
  );
  const pending = [];
  const launch = (i, due) => {
    const w = writes.make(i);
    const target = targets[i % targets.length];
    const p = request(agent, target, "POST", w.path, w.headers, w.body).then(
      (res) => {
        const now = nowMs();
        done += 1;
        if (res.status === 201) {
          ok += 1;
          ack.add(now - due);
          lastAck = now;
        } else {
          fail(`HTTP ${res.status}`);
        }
      },
      (err) => {
        done += 1;
        fail(err.code || err.message);
      },
    );
    pending.push(p);
  };
  const start = nowMs();
  const interval = 1000 / rate;
  let i = 0;
  while (i < count) {
    const now = nowMs();
    while (i < count && start + i * interval <= now) {
      launch(i, start + i * interval);
      i += 1;
    }
    if (i < count) await sleep(Math.max(0, Math.min(2, start + i * interval - nowMs())));
  }
  const sendSeconds = (nowMs() - start) / 1000;
  const outstanding = count - done;
  const all = Promise.all(pending);
  const timedOut = await Promise.race([
    all.then(() => false),
    sleep(FINAL_WAIT_MS).then(() => true),
  ]);
  if (timedOut) fail(`${count - done} still unanswered ${FINAL_WAIT_MS / 1000} s after the last`);
  agent.destroy();
  return {
    planned: count,
    ok,
    errors,
    ack: ack.toJSON(),
    started_at: start,
    seconds: ((lastAck ?? nowMs()) - start) / 1000,
    send_seconds: sendSeconds,
    outstanding_at_end: outstanding,
    last_ack_at: lastAck,
  };
}

serve({
  run,
  async close() {
    return {};
  },
});
