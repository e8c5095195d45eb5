// The orchestrator drives each client process over stdin/stdout: one JSON command per line
// in, one JSON answer per line out ({"ok": true, "result": ...} or {"ok": false, "error":
// ...}), in order. Logs go to stderr. When stdin closes (the orchestrator is gone), the process exits.
"use strict";

const readline = require("node:readline");
const { performance } = require("node:perf_hooks");

// Wall-clock milliseconds with sub-millisecond precision, comparable with Python's
// time.time() and with the servers' commit stamps on this machine.
function nowMs() {
  return performance.timeOrigin + performance.now();
}

function serve(handlers) {
  const input = readline.createInterface({ input: process.stdin });
  let queue = Promise.resolve();
  const reply = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);
  input.on("line", (line) => {
    queue = queue.then(async () => {
      let msg;
      try {
        msg = JSON.parse(line);
      } catch (err) {
        reply({ ok: false, error: `not JSON: ${err.message}` });
        return;
      }
      const handler = handlers[msg.cmd];
      if (handler === undefined) {
        reply({ ok: false, error: `unknown command ${JSON.stringify(msg.cmd)}` });
        return;
      }
      try {
        reply({ ok: true, result: await handler(msg) });
      } catch (err) {
        reply({ ok: false, error: err && err.stack ? err.stack : String(err) });
      }
      if (msg.cmd === "close") {
        process.exit(0);
      }
    });
  });
  input.on("close", () => {
    queue.then(() => process.exit(0));
  });
}

function cpuSeconds() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

module.exports = { cpuSeconds, nowMs, serve, sleep };
