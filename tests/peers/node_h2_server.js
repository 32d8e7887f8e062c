// node's HTTP/2 server (TLS, ALPN h2 only) on PORT with CERT and KEY.
// Answers "node-h2 PATH", gzip-encoded and repeated 50 times under /gzip/;
// a POST's answer also says how many bytes it received. Prints "listening"
// once it accepts.
const http2 = require("http2");
const fs = require("fs");
const zlib = require("zlib");
const [port, cert, key] = process.argv.slice(2);
const server = http2.createSecureServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) });
server.on("stream", (stream, headers) => {
  const path = headers[":path"];
  let received = 0;
  stream.on("data", (chunk) => (received += chunk.length));
  stream.on("end", () => {
    const posted = headers[":method"] === "POST" ? ` got ${received} bytes` : "";
    const body = `node-h2 ${path}${posted}\n`;
    if (path.startsWith("/gzip/")) {
      stream.respond({ ":status": 200, "content-type": "text/plain", "content-encoding": "gzip" });
      stream.end(zlib.gzipSync(body.repeat(50)));
    } else {
      stream.respond({ ":status": 200, "content-type": "text/plain" });
      stream.end(body);
    }
  });
});
server.listen(Number(port), "127.0.0.1", () => console.log("listening"));
