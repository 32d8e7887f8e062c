// An HTTP/2 client of https://127.0.0.1:PORT: GETs FIRST and prints
// "ready", then at a line on stdin GETs every other PATH at once on the same
// connection, prints the bodies and exits.
const http2 = require("http2");
const readline = require("readline");
const [port, first, ...paths] = process.argv.slice(2);
const session = http2.connect(`https://127.0.0.1:${port}`, { rejectUnauthorized: false });
session.on("error", (err) => {
  console.error(err.message);
  process.exit(1);
});
function get(path) {
  return new Promise((resolve, reject) => {
    const request = session.request({ ":path": path, "x-client": "node-h2-client" });
    let body = "";
    request.setEncoding("utf8");
    request.on("data", (chunk) => (body += chunk));
    request.on("end", () => resolve(body));
    request.on("error", reject);
    request.end();
  });
}
get(first).then((body) => {
  process.stdout.write(body);
  console.log("ready");
  const input = readline.createInterface({ input: process.stdin });
  input.once("line", async () => {
    input.close();
    const bodies = await Promise.all(paths.map(get));
    process.stdout.write(bodies.join(""));
    session.close();
  });
});
