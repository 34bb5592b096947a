// The operator console (GET /console) in headless Chromium: with API tokens
// on, the operator types the token, sees the node's state and counters,
// looks up a connected MQTT.js client, publishes a test message it
// receives, kicks it, and sees it gone.
import assert from "node:assert/strict";
import mqtt from "mqtt";
import { chromium } from "playwright-core";
import { startGateway, withTimeout, WAIT_MS } from "./gateway.mjs";

const TOKEN = "console-test-token";
const gw = await startGateway({ TETHER_HTTP__TOKENS: JSON.stringify([TOKEN]) });
const client = await withTimeout(
  mqtt.connectAsync(gw.ws, { reconnectPeriod: 0, protocolVersion: 5, clientId: "probe-1", username: "dana" }),
  "CONNACK");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  await client.subscribeAsync("test/console", { qos: 1 });
  const received = new Promise((resolve) => client.on("message", (t, p) => resolve(`${t}: ${p}`)));
  const closed = new Promise((resolve) => client.on("close", resolve));

  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  // Nothing but this node is asked for anything.
  const foreign = [];
  page.on("request", (r) => { if (!r.url().startsWith(`http://${gw.http}/`)) foreign.push(r.url()); });
  await page.goto(`http://${gw.http}/console`);
  await page.locator("#state", { hasText: "ready" }).waitFor({ timeout: WAIT_MS });
  await page.locator("#connections", { hasText: "1" }).waitFor({ timeout: WAIT_MS });
  await page.locator("#counters td", { hasText: "PUBLISH in" }).waitFor({ timeout: WAIT_MS });

  // Without the token the API refuses, and the page says so.
  await page.fill("#who", "probe-1");
  await page.click("#lookup button");
  await page.locator("#error", { hasText: "401" }).waitFor({ timeout: WAIT_MS });

  await page.fill("#token", TOKEN);
  await page.dispatchEvent("#token", "change");
  await page.click("#lookup button");
  await page.locator("#found", { hasText: "probe-1: online" }).waitFor({ timeout: WAIT_MS });
  const detail = JSON.parse(await page.textContent("#detail"));
  assert.equal(detail.username, "dana");
  assert.equal(detail.transport, "ws");

  await page.fill("#payload", "hello from the console");
  await page.click("#publish button");
  await page.locator("#published", { hasText: "accepted" }).waitFor({ timeout: WAIT_MS });
  assert.equal(await withTimeout(received, "the console's message at the client"), "test/console: hello from the console");

  await page.click("#kick");
  await withTimeout(closed, "the kicked client's connection to close");
  await page.locator("#found", { hasText: /probe-1: (offline|no such session)/ }).waitFor({ timeout: WAIT_MS });

  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  assert.deepEqual(foreign, [], "the console fetches nothing from elsewhere");
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  console.log("console: ok (looked up, published to and kicked an MQTT.js client)");
} finally {
  await browser.close();
  client.end(true);
  gw.stop();
}
