// A Socket.IO subscription to the peer (loadtests/peer/server.js): socket.io-client 4.8 from
// loadtests/peer/node_modules (installed by the benchmark with `npm ci`), WebSocket transport
// only, no automatic reconnection (a dropped socket is counted, not hidden).
"use strict";

const path = require("node:path");
const { createRequire } = require("node:module");
const { nowMs } = require("./commands");

const peerRequire = createRequire(path.join(__dirname, "..", "peer", "package.json"));
let io = null;

class SocketIO {
  constructor(pool, target) {
    io ??= peerRequire("socket.io-client").io;
    this.pool = pool;
    this.target = target;
    this.closed = null;
    this.ends = [];
  }

  get kind() {
    return "sio";
  }

  // Socket.IO has no resume from a position without its connection-state recovery, which the
  // Redis adapter does not support: a dropped socket stays dropped.
  get resumable() {
    return false;
  }

  end(reason) {
    if (this.closed === null) {
      this.closed = reason;
      this.ends.push(reason);
    }
  }

  open(timeoutMs) {
    const { host, port } = this.target;
    return new Promise((resolve, reject) => {
      const socket = io(`http://${host}:${port}`, {
        transports: ["websocket"],
        reconnection: false,
        forceNew: true,
        timeout: timeoutMs,
      });
      this.socket = socket;
      socket.once("connect", resolve);
      socket.once("connect_error", (err) => {
        this.end(`failed: ${err.message}`);
        socket.close();
        reject(err);
      });
      socket.on("item_created", (ev) => this.pool.deliver(this, ev.seq, ev.t, nowMs()));
      socket.on("disconnect", (reason) => this.end(`sio ${reason}`));
    });
  }

  close() {
    this.end("closed by client");
    this.socket.disconnect();
  }
}

module.exports = { SocketIO };
