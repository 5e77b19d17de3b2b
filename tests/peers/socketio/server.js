// A fan-out peer of rewind's benchmarks: socket.io 4, the room broadcast a Node user of
// Socket.IO would write.
//
// Protocol (the same as ../socketioxide): a client connecting with `?role=pub` is the
// publisher, and every `pub` event it emits is broadcast as `event`, its data unchanged,
// to the room `fan` (acknowledged after the broadcast when the publisher asks for an ack).
// Any other client joins `fan` in the connection handler and is then sent `ready`;
// handlers are registered before the client can emit. WebSocket transport only.
// Usage: `node server.js [PORT]` (default 0: any); the first line on stdout is
// `listening on http://127.0.0.1:PORT`.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
});

io.on("connection", (socket) => {
  if (socket.handshake.query.role === "pub") {
    socket.on("pub", (data, ack) => {
      io.to("fan").emit("event", data);
      if (typeof ack === "function") ack();
    });
  } else {
    socket.join("fan");
    socket.emit("ready");
  }
});

httpServer.listen(Number(process.argv[2] || 0), "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${httpServer.address().port}`);
});
