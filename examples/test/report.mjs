// A `tether-bench --report` page in headless Chromium: every expected
// series is a drawn path (points, a non-empty box), the screenshot is not
// blank (ink, and pixels of the first series colour), and the page asks
// for nothing over the network.
//   node test/report.mjs REPORT.html series1,series2,... [SCREENSHOT.png]
import assert from "node:assert/strict";
import path from "node:path";
import { chromium } from "playwright-core";

const [file, expected, shot] = process.argv.slice(2);
assert.ok(file && expected, "usage: report.mjs REPORT.html series,... [SCREENSHOT.png]");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 800 } });
  const requests = [];
  page.on("request", (r) => { if (!r.url().startsWith("file:")) requests.push(r.url()); });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`file://${path.resolve(file)}`);
  const drawn = await page.$$eval("path[data-series]", (ps) => ps.map((p) => {
    const b = p.getBBox();
    return { id: p.dataset.series, points: Number(p.dataset.points), w: b.width, h: b.height };
  }));
  for (const id of expected.split(",")) {
    const s = drawn.find((d) => d.id === id);
    assert.ok(s, `series ${id} is on the page (${drawn.map((d) => d.id).join(", ")})`);
    assert.ok(s.points >= 2, `series ${id} has points (${s.points})`);
    assert.ok(s.w > 0 || s.h > 0, `series ${id} is drawn (box ${s.w} x ${s.h})`);
  }
  const png = await page.screenshot({ fullPage: true, ...(shot ? { path: shot } : {}) });
  const ink = await page.evaluate(async (b64) => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    await img.decode();
    const c = document.createElement("canvas");
    c.width = img.width; c.height = img.height;
    const g = c.getContext("2d");
    g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let dark = 0, blue = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i] < 235 || d[i + 1] < 235 || d[i + 2] < 235) dark++;
      // The first series colour, #1f77b4, give or take antialiasing.
      if (Math.abs(d[i] - 0x1f) < 40 && Math.abs(d[i + 1] - 0x77) < 40 && Math.abs(d[i + 2] - 0xb4) < 40) blue++;
    }
    return { dark: dark / (d.length / 4), blue };
  }, png.toString("base64"));
  assert.ok(ink.dark > 0.01, `the screenshot has ink (${(100 * ink.dark).toFixed(2)} % of pixels)`);
  assert.ok(ink.blue > 200, `the charts' lines are drawn (${ink.blue} pixels of the first series colour)`);
  assert.deepEqual(requests, [], "the report fetches nothing");
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  console.log(`report: ok (${drawn.length} series drawn, ${(100 * ink.dark).toFixed(1)} % ink)`);
} finally {
  await browser.close();
}
