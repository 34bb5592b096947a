// The examples page in headless Chromium (Debian's `chromium`, driven by
// playwright-core): it connects with MQTT.js over WebSocket, subscribes,
// and shows a message pushed through the HTTP API.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { chromium } from "playwright-core";
import { push, startGateway, WAIT_MS } from "./gateway.mjs";

const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const files = {
  "/push.html": ["push.html", "text/html"],
  "/node_modules/mqtt/dist/mqtt.min.js": ["node_modules/mqtt/dist/mqtt.min.js", "text/javascript"],
};
const server = createServer(async (req, res) => {
  const f = files[new URL(req.url, "http://x").pathname];
  if (!f) { res.writeHead(404).end(); return; }
  res.writeHead(200, { "Content-Type": f[1] }).end(await readFile(path.join(dir, f[0])));
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));

const gw = await startGateway();
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const q = new URLSearchParams({ url: gw.ws, user: "bob", http: gw.http });
  await page.goto(`http://127.0.0.1:${server.address().port}/push.html?${q}`);
  await page.locator("#status", { hasText: "subscribed" }).waitFor({ timeout: WAIT_MS });
  await push(gw.http, "bob", { payload: "hello, browser", qos: 1 });
  await page.locator("#log li", { hasText: "user/bob/inbox: hello, browser" }).waitFor({ timeout: WAIT_MS });
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT });
  console.log("browser: ok (the examples page received a message pushed over HTTP)");
} finally {
  await browser.close();
  gw.stop();
  server.close();
}
