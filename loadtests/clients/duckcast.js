// Duckcast subscriptions with nothing but Node's own modules (so the test suite runs this
// same code without npm): SSE `GET /api/events` read as a raw HTTP/1.1 stream, and WebSocket
// `GET /ws/items?format=json` over an upgraded HTTP connection with a minimal RFC 6455 reader
// (unmasked text frames from the server; pings answered; the server's close code kept).
//
// Each event's payload is parsed as JSON, as a real client would. Its commit time is the
// item's `updated_at` (the store stamps it while planning the commit, a few ms before COMMIT:
// this is counted against Duckcast), parsed once per seq per process.
"use strict";

const crypto = require("node:crypto");
const http = require("node:http");
const { nowMs } = require("./commands");


function isoMs(stamp) {
  // "2026-01-02T03:04:05.123456Z": Date.parse keeps only milliseconds; keep the micros.
  const dot = stamp.indexOf(".");
  if (dot < 0) return Date.parse(stamp);
  const end = stamp.length - 1; // the "Z"
  return Date.parse(`${stamp.slice(0, dot)}Z`) + Number(`0${stamp.slice(dot, end)}`) * 1000;
}

class Stream {
  constructor(pool, target) {
    this.pool = pool;
    this.target = target;
    this.closed = null; // why the stream ended; null while open
    this.ends = []; // every reason it ended for, resumes included
    this.settled = false;
  }

  // A stream the server ended (overflow, shutdown, error) is resumed from its last seq, as
  // EventSource and a well-behaved WebSocket client would; one that never opened is not.
  get resumable() {
    const why = this.closed;
    return why !== null && why !== "closed by client" && !why.startsWith("failed");
  }

  end(reason) {
    if (this.closed === null) {
      this.closed = reason;
      this.ends.push(reason);
    }
  }

  item(seq, item, now) {
    const stamp = item.updated_at;
    let commit = this.pool.commits.get(seq);
    if (commit === undefined && typeof stamp === "string") {
      commit = isoMs(stamp);
      this.pool.commits.set(seq, commit);
    }
    this.pool.deliver(this, seq, commit, now);
  }

  // Resolve once the server has registered the subscriber; reject on refusal or timeout.
  connect(request, timeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error(`no stream within ${timeoutMs} ms`)), timeoutMs);
      const fail = (err) => {
        clearTimeout(timer);
        if (!this.settled) {
          this.settled = true;
          this.end(`failed: ${err.message}`);
          request.destroy();
          reject(err);
        } else {
          this.end(`error ${err.code || err.message}`);
        }
      };
      this.ready = () => {
        clearTimeout(timer);
        if (!this.settled) {
          this.settled = true;
          resolve();
        }
      };
      this.fail = fail;
      request.on("error", fail);
      request.end();
    });
  }
}

class SSE extends Stream {
  get kind() {
    return "sse";
  }

  open(timeoutMs, since) {
    const { host, port } = this.target;
    const headers = { accept: "text/event-stream", "cache-control": "no-cache" };
    if (since) headers["last-event-id"] = String(since);
    this.closed = null;
    this.settled = false;
    this.pending = "";
    const req = http.request({
      host,
      port,
      path: `/api/events?token=${this.pool.token}`,
      headers,
      agent: false,
    });
    req.on("response", (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        this.fail(new Error(`HTTP ${res.statusCode}`));
        return;
      }
      this.res = res;
      res.setEncoding("utf8");
      res.on("data", (chunk) => this.onText(chunk, nowMs()));
      res.on("end", () => this.end("sse eof"));
      res.on("error", (err) => this.end(`error ${err.code || err.message}`));
    });
    return this.connect(req, timeoutMs);
  }

  onText(chunk, now) {
    const text = this.pending ? this.pending + chunk : chunk;
    let start = 0;
    let end = text.indexOf("\n\n", start);
    while (end >= 0) {
      this.onBlock(text.slice(start, end), now);
      start = end + 2;
      end = text.indexOf("\n\n", start);
    }
    this.pending = start < text.length ? text.slice(start) : "";
  }

  onBlock(block, now) {
    if (block.charCodeAt(0) === 58) return; // ":" a comment (keep-alive)
    let id = null;
    let event = "message";
    let data = "";
    for (const line of block.split("\n")) {
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
      if (field === "data") data = data ? `${data}\n${value}` : value;
      else if (field === "id") id = value;
      else if (field === "event") event = value;
    }
    if (event === "item_created" || event === "item_updated") {
      this.item(Number(id), JSON.parse(data), now);
    } else if (event === "item_deleted") {
      this.pool.deliver(this, Number(id), undefined, now);
    } else if (event === "connected") {
      this.ready();
    } else if (event !== "message") {
      // overflow, reset, error, expired: the server ends the stream after these
      this.end(`sse ${event}`);
    }
  }

  close() {
    this.end("closed by client");
    if (this.res) this.res.destroy();
  }
}

class WebSocketJSON extends Stream {
  get kind() {
    return "ws";
  }

  open(timeoutMs, since) {
    const { host, port } = this.target;
    this.closed = null;
    this.settled = false;
    this.buf = null;
    this.fragments = null;
    let path = `/ws/items?token=${this.pool.token}&format=json`;
    if (since) path += `&since=${since}`;
    const req = http.request({
      host,
      port,
      path,
      agent: false,
      headers: {
        connection: "Upgrade",
        upgrade: "websocket",
        "sec-websocket-key": crypto.randomBytes(16).toString("base64"),
        "sec-websocket-version": "13",
      },
    });
    req.on("upgrade", (res, socket, head) => {
      this.socket = socket;
      socket.setNoDelay(true);
      socket.on("data", (chunk) => this.onData(chunk, nowMs()));
      socket.on("close", () => this.end("ws eof"));
      socket.on("error", (err) => this.end(`error ${err.code || err.message}`));
      if (head.length) this.onData(head, nowMs());
      // Duckcast accepts first and closes with a code if the token or query is bad: a close
      // arriving with the upgrade is a refusal, not a stream.
      if (this.closed === null) this.ready();
      else this.fail(new Error(this.closed));
    });
    req.on("response", (res) => {
      res.resume();
      this.fail(new Error(`HTTP ${res.statusCode}`));
    });
    return this.connect(req, timeoutMs);
  }

  onData(chunk, now) {
    const buf = this.buf ? Buffer.concat([this.buf, chunk]) : chunk;
    let pos = 0;
    while (buf.length - pos >= 2) {
      const b0 = buf[pos];
      const b1 = buf[pos + 1];
      let length = b1 & 0x7f;
      let head = 2;
      if (length === 126) {
        if (buf.length - pos < 4) break;
        length = buf.readUInt16BE(pos + 2);
        head = 4;
      } else if (length === 127) {
        if (buf.length - pos < 10) break;
        length = Number(buf.readBigUInt64BE(pos + 2));
        head = 10;
      }
      if (b1 & 0x80) {
        this.abort("masked frame from the server");
        return;
      }
      const end = pos + head + length;
      if (end > buf.length) break;
      const payload = buf.subarray(pos + head, end);
      pos = end;
      const opcode = b0 & 0x0f;
      const fin = (b0 & 0x80) !== 0;
      if (opcode === 1 || opcode === 0) {
        if (fin && this.fragments === null) {
          this.onMessage(payload.toString("utf8"), now);
        } else {
          this.fragments = [...(this.fragments || []), Buffer.from(payload)];
          if (fin) {
            const whole = Buffer.concat(this.fragments).toString("utf8");
            this.fragments = null;
            this.onMessage(whole, now);
          }
        }
      } else if (opcode === 8) {
        const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
        this.end(`ws close ${code}`);
        this.send(0x8, payload.subarray(0, 2));
        this.socket.end();
        this.buf = null;
        return;
      } else if (opcode === 9) {
        this.send(0xa, payload);
      } else if (opcode !== 0xa) {
        this.abort(`unexpected WebSocket opcode ${opcode}`);
        return;
      }
    }
    this.buf = pos < buf.length ? buf.subarray(pos) : null;
  }

  onMessage(text, now) {
    const ev = JSON.parse(text);
    if (ev.type === "RESET") {
      this.end("ws reset");
    } else if (ev.item) {
      this.item(ev.seq, ev.item, now);
    } else {
      this.pool.deliver(this, ev.seq, undefined, now);
    }
  }

  // Client frames are masked (RFC 6455 5.3); only control frames are ever sent here.
  send(opcode, payload) {
    if (!this.socket || this.socket.destroyed) return;
    const mask = crypto.randomBytes(4);
    const frame = Buffer.alloc(6 + payload.length);
    frame[0] = 0x80 | opcode;
    frame[1] = 0x80 | payload.length;
    mask.copy(frame, 2);
    for (let i = 0; i < payload.length; i++) frame[6 + i] = payload[i] ^ mask[i & 3];
    this.socket.write(frame);
  }

  abort(reason) {
    this.end(reason);
    if (this.socket) this.socket.destroy();
  }

  close() {
    this.abort("closed by client");
  }
}

module.exports = { SSE, WebSocketJSON, isoMs };
