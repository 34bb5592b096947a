// Starts the tether binary on free ports and reads its addresses from the
// startup banner. TETHER_BIN overrides the binary (default: the debug build).
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

export const WAIT_MS = 10_000;

export async function startGateway(env = {}) {
  const bin = process.env.TETHER_BIN || path.join(root, "target/debug/tether");
  const child = spawn(bin, [], {
    env: {
      ...process.env,
      TETHER_LISTENERS__TCP: "127.0.0.1:0",
      TETHER_WEBSOCKET__LISTEN: "127.0.0.1:0",
      TETHER_HTTP__LISTEN: "127.0.0.1:0",
      TETHER_NODE__CORES: "2",
      ...env,
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const addrs = {};
  const lines = createInterface({ input: child.stdout });
  await withTimeout(new Promise((resolve, reject) => {
    child.on("exit", (code) => reject(new Error(`tether exited with ${code} (build it: cargo build)`)));
    lines.on("line", (line) => {
      const ws = line.match(/(ws:\/\/\S+)/);
      const http = line.match(/http api\s+http:\/\/(\S+)/);
      if (ws) addrs.ws = ws[1];
      if (http) addrs.http = http[1];
      if (line.includes("ready")) resolve();
    });
  }), "the gateway's banner");
  if (!addrs.ws || !addrs.http) throw new Error(`banner lacks addresses: ${JSON.stringify(addrs)}`);
  return { ...addrs, stop: () => child.kill("SIGTERM") };
}

export function withTimeout(promise, what, ms = WAIT_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

export async function push(http, user, body) {
  const r = await fetch(`http://${http}/v1/push/users/${user}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (r.status !== 200) throw new Error(`push answered ${r.status}: ${await r.text()}`);
  return r.json();
}
