// A small browser client for Tether that tries MQTT over WebSocket first
// and falls back to Server-Sent Events, then to long-polling, keeping one
// session (its id is the MQTT client id) whichever transport carries it.
//
//   const c = TetherPush.connect({ base: "http://host:8083", username: "bob" });
//   c.on("transport", (name) => …);        // "websocket" | "sse" | "poll"
//   c.on("message", ({ topic, payload, qos }) => …);
//   await c.subscribe("user/bob/inbox", 1);
//   await c.publish("chat/room", "hello", 1);
//
// WebSocket needs MQTT.js (`mqtt` global) on the page; without it the
// client starts with SSE. QoS 1 messages are acknowledged after the
// "message" handlers ran: over SSE by POST …/ack (batched), over polling by
// the next poll's `ack=` cursor. The HTTP protocol is in README.md, "HTTP
// fallback".
(function (global) {
  "use strict";

  const DEFAULTS = {
    wsPath: "/mqtt",
    fallbackPath: "/push",
    transports: ["websocket", "sse", "poll"],
    // A transport that has not opened the session in this time is given up.
    openTimeoutMs: 5000,
    // SSE acknowledgements are batched over this long.
    ackDelayMs: 100,
    sessionExpirySecs: 300,
  };

  function randomSid() {
    const b = new Uint8Array(12);
    crypto.getRandomValues(b);
    return "web-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }

  function connect(options) {
    const o = Object.assign({}, DEFAULTS, options);
    const base = (o.base || location.origin).replace(/\/$/, "");
    const sid = o.sid || randomSid();
    const handlers = {};
    const emit = (ev, ...args) => (handlers[ev] || []).forEach((f) => f(...args));
    const creds = new URLSearchParams();
    if (o.username) creds.set("username", o.username);
    if (o.password) creds.set("password", o.password);
    if (o.token) creds.set("token", o.token);
    const url = (action, extra) => {
      const q = new URLSearchParams(creds);
      q.set("sid", sid);
      for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
      return `${base}${o.fallbackPath}/${action}?${q}`;
    };
    const post = async (action, body) => {
      const r = await fetch(url(action), { method: "POST", body: JSON.stringify(body) });
      const text = await r.text();
      if (!r.ok) throw new Error(`${action}: ${r.status} ${text}`);
      return text ? JSON.parse(text) : {};
    };

    let current = null; // the open transport: { name, subscribe, publish, close }
    let stopped = false;

    function deliver(topic, payload, qos) {
      emit("message", { topic, payload, qos });
    }

    // --- MQTT over WebSocket (MQTT.js) ---
    function openWebSocket() {
      return new Promise((resolve, reject) => {
        if (!global.mqtt) return reject(new Error("MQTT.js is not on the page"));
        const wsUrl = base.replace(/^http/, "ws") + o.wsPath;
        const client = global.mqtt.connect(wsUrl, {
          protocolVersion: 5,
          clientId: sid,
          clean: false,
          properties: { sessionExpiryInterval: o.sessionExpirySecs },
          username: o.username,
          password: o.password || o.token,
          reconnectPeriod: 0,
          connectTimeout: o.openTimeoutMs,
        });
        let opened = false;
        client.on("connect", () => {
          opened = true;
          resolve({
            name: "websocket",
            subscribe: (topic, qos) =>
              new Promise((ok, fail) => client.subscribe(topic, { qos }, (e) => (e ? fail(e) : ok()))),
            publish: (topic, payload, qos) =>
              new Promise((ok, fail) => client.publish(topic, payload, { qos }, (e) => (e ? fail(e) : ok()))),
            close: () => client.end(true),
          });
        });
        client.on("message", (topic, payload, packet) =>
          deliver(topic, new TextDecoder().decode(payload), packet.qos));
        const failed = (e) => {
          if (!opened) { client.end(true); reject(e || new Error("WebSocket closed")); }
          else if (!stopped) lost("websocket");
        };
        client.on("error", failed);
        client.on("close", () => failed());
      });
    }

    // --- Server-Sent Events ---
    function openSse() {
      return new Promise((resolve, reject) => {
        const es = new EventSource(url("sse"));
        let opened = false;
        let ackTimer = null;
        let lastId = null;
        const timer = setTimeout(() => { if (!opened) { es.close(); reject(new Error("SSE did not open")); } },
          o.openTimeoutMs);
        const flushAck = () => {
          ackTimer = null;
          if (lastId) post("ack", { id: lastId }).catch(() => {});
        };
        es.onmessage = (m) => {
          const ev = JSON.parse(m.data);
          if (ev.type === "session" && !opened) {
            opened = true;
            clearTimeout(timer);
            resolve({
              name: "sse",
              subscribe: (topic, qos) => post("subscribe", { topic, qos }),
              publish: (topic, payload, qos) => post("publish", { topic, payload, qos }),
              close: () => es.close(),
            });
          } else if (ev.type === "message") {
            deliver(ev.topic, ev.payload, ev.qos);
            lastId = ev.id;
            if (!ackTimer) ackTimer = setTimeout(flushAck, o.ackDelayMs);
          } else if (ev.type === "closed") {
            es.close();
            if (opened && !stopped) lost("sse");
          }
        };
        // EventSource reconnects by itself (with Last-Event-ID) after a
        // network error; before the session opened, it counts as failed.
        es.onerror = () => {
          if (!opened) { clearTimeout(timer); es.close(); reject(new Error("SSE failed")); }
        };
      });
    }

    // --- Long-polling ---
    function openPoll() {
      return new Promise((resolve, reject) => {
        let opened = false;
        let cursor = "";
        let closed = false;
        const loop = async () => {
          while (!closed && !stopped) {
            let body;
            try {
              const r = await fetch(url("poll", cursor ? { ack: cursor } : {}));
              if (!r.ok) throw new Error(`poll: ${r.status} ${await r.text()}`);
              body = await r.json();
            } catch (e) {
              if (!opened) return reject(e);
              await new Promise((r) => setTimeout(r, 1000));
              continue;
            }
            for (const ev of body.events) {
              if (ev.type === "session" && !opened) {
                opened = true;
                resolve({
                  name: "poll",
                  subscribe: (topic, qos) => post("subscribe", { topic, qos }),
                  publish: (topic, payload, qos) => post("publish", { topic, payload, qos }),
                  close: () => { closed = true; },
                });
              } else if (ev.type === "message") {
                deliver(ev.topic, ev.payload, ev.qos);
              } else if (ev.type === "closed") {
                closed = true;
                if (opened && !stopped) lost("poll");
              }
              if (ev.id) cursor = ev.id;
            }
          }
        };
        loop();
        setTimeout(() => { if (!opened) { closed = true; reject(new Error("polling did not open")); } },
          o.openTimeoutMs);
      });
    }

    const openers = { websocket: openWebSocket, sse: openSse, poll: openPoll };
    let ready;

    async function start() {
      for (const name of o.transports) {
        if (stopped) return;
        try {
          current = await openers[name]();
          emit("transport", current.name);
          return current;
        } catch (e) {
          emit("fallback", name, e.message);
        }
      }
      throw new Error("no transport got through");
    }

    function lost(name) {
      // The session is kept on the server: open again, from the top.
      emit("lost", name);
      current = null;
      ready = new Promise((r) => setTimeout(r, 1000)).then(start);
      ready.catch((e) => emit("error", e));
    }

    ready = start();
    ready.catch((e) => emit("error", e));

    return {
      sid,
      get transport() { return current && current.name; },
      on(ev, f) { (handlers[ev] = handlers[ev] || []).push(f); return this; },
      async subscribe(topic, qos = 1) { return (await ready).subscribe(topic, qos); },
      async publish(topic, payload, qos = 1) { return (await ready).publish(topic, payload, qos); },
      close() { stopped = true; if (current) current.close(); },
    };
  }

  global.TetherPush = { connect };
})(typeof window !== "undefined" ? window : globalThis);
