// The fallback page in headless Chromium behind a proxy written here that
// can refuse WebSocket upgrades (as some corporate proxies do) and SSE
// streams: the page's client falls back from WebSocket to SSE, then to
// long-polling, and receives a QoS 1 push through the HTTP API each time,
// acknowledging it.
import { createServer, request } from "node:http";
import { connect } from "node:net";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { chromium } from "playwright-core";
import { push, startGateway, WAIT_MS } from "./gateway.mjs";

const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const files = {
  "/fallback.html": ["fallback.html", "text/html"],
  "/tether-push.js": ["tether-push.js", "text/javascript"],
  "/node_modules/mqtt/dist/mqtt.min.js": ["node_modules/mqtt/dist/mqtt.min.js", "text/javascript"],
};

const gw = await startGateway();
const upstream = new URL(gw.ws.replace(/^ws/, "http"));
// What the proxy lets through, and what it saw.
const mode = { ws: true, sse: true };
const seen = { upgradesRefused: 0, sseRefused: 0, acks: 0, pollAcks: 0 };

const server = createServer(async (req, res) => {
  const u = new URL(req.url, "http://x");
  const f = files[u.pathname];
  if (f) {
    res.writeHead(200, { "Content-Type": f[1] }).end(await readFile(path.join(dir, f[0])));
    return;
  }
  if (!u.pathname.startsWith("/push/")) { res.writeHead(404).end(); return; }
  if (u.pathname === "/push/sse" && !mode.sse) {
    seen.sseRefused++;
    res.writeHead(502, { "Content-Type": "text/plain" }).end("streaming responses are not allowed here");
    return;
  }
  if (u.pathname === "/push/ack") seen.acks++;
  if (u.pathname === "/push/poll" && u.searchParams.get("ack")) seen.pollAcks++;
  // Forward as is, streaming the response (SSE included).
  const up = request({ host: upstream.hostname, port: upstream.port, method: req.method,
                       path: req.url, headers: req.headers }, (r) => {
    res.writeHead(r.statusCode, r.headers);
    r.pipe(res);
  });
  up.on("error", () => res.destroy());
  req.pipe(up);
});
server.on("upgrade", (req, socket, head) => {
  if (!mode.ws) {
    seen.upgradesRefused++;
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    return;
  }
  const up = connect(Number(upstream.port), upstream.hostname, () => {
    let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
    for (let i = 0; i < req.rawHeaders.length; i += 2) raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
    up.write(raw + "\r\n");
    up.write(head);
    up.pipe(socket);
    socket.pipe(up);
  });
  up.on("error", () => socket.destroy());
  socket.on("error", () => up.destroy());
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});

async function scenario(name, allow, expected, then = async () => {}) {
  Object.assign(mode, allow);
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  const user = `user-${name}`;
  const q = new URLSearchParams({ base: origin, user, http: gw.http });
  await page.goto(`${origin}/fallback.html?${q}`);
  await page.locator("#transport", { hasText: expected }).waitFor({ timeout: WAIT_MS });
  await page.locator("#status", { hasText: "subscribed" }).waitFor({ timeout: WAIT_MS });
  const payload = `hello over ${expected}`;
  await push(gw.http, user, { payload, qos: 1 });
  await page.locator("#log li", { hasText: `user/${user}/inbox: ${payload}` }).waitFor({ timeout: WAIT_MS });
  await then();
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  if (process.env.SCREENSHOT) await page.screenshot({ path: `${process.env.SCREENSHOT}.${name}.png` });
  await page.close();
}

try {
  await scenario("open", { ws: true, sse: true }, "websocket");
  // The QoS 1 message is acknowledged (a batched POST …/ack).
  await scenario("nows", { ws: false, sse: true }, "sse",
    () => waitFor(() => seen.acks >= 1, "an SSE acknowledgement"));
  if (seen.upgradesRefused < 1) throw new Error("the proxy refused no upgrade");
  // Acknowledged by the next poll's cursor.
  await scenario("nostream", { ws: false, sse: false }, "poll",
    () => waitFor(() => seen.pollAcks >= 1, "a poll carrying an acknowledgement"));
  if (seen.sseRefused < 1) throw new Error("the proxy refused no SSE stream");
  console.log(`fallback: ok (websocket, then sse with upgrades refused, then poll with streams refused: ${JSON.stringify(seen)})`);
} finally {
  await browser.close();
  gw.stop();
  server.close();
}

async function waitFor(cond, what) {
  const end = Date.now() + WAIT_MS;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
