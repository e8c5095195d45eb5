// The comparison target of `python -m loadtests.fanout`: Socket.IO 4.8 with its Redis adapter.
//
//   node loadtests/peer/server.js --port P --redis redis://127.0.0.1:R/0
//
// The benchmark starts two of these on different ports against one private redis-server, the
// way Socket.IO is scaled out (each process emits to its own sockets, and the adapter relays
// every broadcast to the other processes over Redis pub/sub). Clients connect with the
// WebSocket transport only, so no sticky sessions are needed.
//
//   POST /write  {"seq": n, "title": ..., "description": ...}
//       -> emits `item_created` {seq, t, item} to every socket of every process, answers 201.
//          `t` is the commit time (ms since the epoch, sub-ms precision) taken just before the
//          emit. There is no database behind it: Duckcast commits to DuckDB before it
//          publishes, this peer does not, which favours the peer.
//   GET /readyz  -> 200 once both Redis connections are up.
"use strict";

const http = require("node:http");
const { performance } = require("node:perf_hooks");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

function arg(name) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 || i + 1 >= process.argv.length) {
    console.error(`usage: node server.js --port P --redis URL (missing --${name})`);
    process.exit(2);
  }
  return process.argv[i + 1];
}

const port = Number(arg("port"));
const redisUrl = arg("redis");
const MAX_BODY = 64 * 1024;

function nowMs() {
  return performance.timeOrigin + performance.now();
}

function answer(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

let ready = false;
let io = null;

function write(req, res) {
  const chunks = [];
  let size = 0;
  req.on("data", (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY) {
      answer(res, 413, { detail: "body too large" });
      req.destroy();
      return;
    }
    chunks.push(chunk);
  });
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      answer(res, 400, { detail: "malformed JSON" });
      return;
    }
    if (!Number.isSafeInteger(body.seq) || typeof body.title !== "string") {
      answer(res, 422, { detail: "seq (integer) and title (string) are required" });
      return;
    }
    const t = nowMs();
    const stamp = new Date(t).toISOString();
    // The same fields as a Duckcast item, so both systems carry payloads of the same size.
    const item = {
      id: body.seq,
      title: body.title,
      description: typeof body.description === "string" ? body.description : "",
      status: "active",
      priority: 0,
      owner_id: 1,
      created_at: stamp,
      updated_at: stamp,
      version: 1,
    };
    io.emit("item_created", { seq: body.seq, t, item });
    answer(res, 201, item);
  });
}

const httpServer = http.createServer((req, res) => {
  if (req.method === "POST" && req.url === "/write") {
    write(req, res);
  } else if (req.method === "GET" && req.url === "/readyz") {
    answer(res, ready ? 200 : 503, { status: ready ? "ready" : "starting" });
  } else {
    answer(res, 404, { detail: "not found" });
  }
});
// The writer keeps its connections busy; the default 5 s keep-alive is enough, but a long
// idle between phases must not leave it writing on a socket the server just closed.
httpServer.keepAliveTimeout = 60_000;

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  for (const client of [pub, sub]) {
    client.on("error", (err) => console.error(`redis: ${err.message}`));
  }
  await Promise.all([pub.connect(), sub.connect()]);
  io = new Server(httpServer, {
    adapter: createAdapter(pub, sub),
    transports: ["websocket"],
    serveClient: false,
  });
  httpServer.listen(port, "127.0.0.1", () => {
    ready = true;
    console.error(`peer listening on 127.0.0.1:${port} (pid ${process.pid})`);
  });
}

process.on("SIGTERM", () => {
  ready = false;
  io?.close();
  process.exit(0);
});

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
