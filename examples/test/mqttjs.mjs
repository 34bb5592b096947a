// MQTT.js (npm `mqtt`) under Node as an independent WebSocket client: MQTT 5
// and 3.1.1 clients subscribe, a message pushed over HTTP reaches both, and
// a 100 kB message published by one (spanning WebSocket frames) reaches the
// other intact.
import assert from "node:assert/strict";
import mqtt from "mqtt";
import { push, startGateway, withTimeout } from "./gateway.mjs";

const gw = await startGateway();
const clients = [];
try {
  const connect = (opts) => withTimeout(mqtt.connectAsync(gw.ws, { reconnectPeriod: 0, ...opts }), "CONNACK");
  const v5 = await connect({ protocolVersion: 5, clientId: "node-v5", username: "alice" });
  const v4 = await connect({ protocolVersion: 4, clientId: "node-v4", username: "alice" });
  clients.push(v5, v4);
  const received = (c, n) => new Promise((resolve) => {
    const got = [];
    c.on("message", (topic, payload, packet) => {
      got.push({ topic, payload, packet });
      if (got.length === n) resolve(got);
    });
  });
  await v5.subscribeAsync("user/alice/inbox", { qos: 1 });
  await v4.subscribeAsync(["user/alice/inbox", "files/#"], { qos: 1 });
  const atV5 = received(v5, 1);
  const atV4 = received(v4, 2);

  const { id, topic } = await push(gw.http, "alice", {
    payload: "hello from HTTP", qos: 1,
    properties: { content_type: "text/plain", user_properties: [["source", "test"]] },
  });
  assert.equal(topic, "user/alice/inbox");
  assert.match(id, /^[0-9a-f]{16}$/);
  const [m5] = await withTimeout(atV5, "the push at the MQTT 5 client");
  assert.equal(m5.payload.toString(), "hello from HTTP");
  assert.equal(m5.packet.properties.contentType, "text/plain");
  assert.equal(m5.packet.properties.userProperties.source, "test");

  const big = Buffer.alloc(100_000, 0xab);
  await v5.publishAsync("files/blob", big, { qos: 1 });
  const got = await withTimeout(atV4, "the push and the 100 kB message at the 3.1.1 client");
  assert.equal(got[0].payload.toString(), "hello from HTTP");
  assert.equal(got[1].topic, "files/blob");
  assert.ok(got[1].payload.equals(big), "the 100 kB payload arrived intact");
  console.log("mqttjs: ok (MQTT 5 and 3.1.1 over WebSocket, HTTP push, 100 kB message)");
} finally {
  await Promise.all(clients.map((c) => c.endAsync().catch(() => {})));
  gw.stop();
}
