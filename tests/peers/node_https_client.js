// GETs each PATH from https://127.0.0.1:PORT in turn over one keep-alive
// connection, 100 ms apart, and prints each body.
const https = require("https");
const [port, ...paths] = process.argv.slice(2);
const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
function get(index) {
  if (index === paths.length) {
    agent.destroy();
    return;
  }
  const options = { host: "127.0.0.1", port: Number(port), path: paths[index], agent, rejectUnauthorized: false };
  https
    .get(options, (res) => {
      let body = "";
      res.on("data", (chunk) => (body += chunk));
      res.on("end", () => {
        process.stdout.write(body);
        setTimeout(() => get(index + 1), 100);
      });
    })
    .on("error", (err) => {
      console.error(err.message);
      process.exit(1);
    });
}
get(0);
