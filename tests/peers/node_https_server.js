// node's https server on PORT with CERT and KEY: answers every request with
// "node-says PATH". node's TLS sockets write into memory BIOs, and libuv
// moves the ciphertext. Prints "listening" once it accepts.
const https = require("https");
const fs = require("fs");
const [port, cert, key] = process.argv.slice(2);
const server = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
  res.end(`node-says ${req.url}\n`);
});
server.listen(Number(port), "127.0.0.1", () => console.log("listening"));
