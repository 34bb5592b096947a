"""Python paho-mqtt against two Tether nodes sharing Redis: a persistent
3.1.1 session moves from node 1 to node 2 with its queued messages, and an
MQTT 5 client on node 2 shows in node 1's presence.

Usage: resume.py MQTT_PORT_1 MQTT_PORT_2 HTTP_PORT_1
Exits 0 when every check holds; otherwise prints what failed and exits 1.
"""

import json
import queue
import sys
import urllib.request

import paho.mqtt.client as mqtt

WAIT = 10.0


def client(client_id, **kw):
    # paho 2.x asks which callback API the caller speaks; 1.x has no such
    # argument.
    if hasattr(mqtt, "CallbackAPIVersion"):
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, client_id=client_id, **kw)
    return mqtt.Client(client_id=client_id, **kw)


def connected(c, port, **kw):
    """Connects and returns (client, session present, inbox)."""
    acks, inbox = queue.Queue(), queue.Queue()
    c.on_connect = lambda _c, _u, flags, rc, *props: acks.put((flags, rc))
    c.on_message = lambda _c, _u, msg: inbox.put(msg)
    c.connect("127.0.0.1", port, keepalive=30, **kw)
    c.loop_start()
    flags, rc = acks.get(timeout=WAIT)
    if rc != 0:
        fail(f"CONNACK {rc}")
    return c, flags.get("session present", 0), inbox


def fail(why):
    print(f"paho check failed: {why}", file=sys.stderr)
    sys.exit(1)


def main():
    port1, port2, http1 = (int(a) for a in sys.argv[1:4])

    sub, present, _ = connected(client("paho-sub", clean_session=False), port1)
    if present:
        fail("a new session said present")
    _, mid = sub.subscribe("paho/#", qos=1)
    sub.disconnect()
    sub.loop_stop()

    pub, _, _ = connected(client("paho-pub"), port1)
    for n in range(10):
        info = pub.publish("paho/x", str(n), qos=1)
        info.wait_for_publish(timeout=WAIT)
        if not info.is_published():
            fail(f"message {n} not acknowledged")
    pub.disconnect()
    pub.loop_stop()

    moved, present, inbox = connected(client("paho-sub", clean_session=False), port2)
    if not present:
        fail("the session did not come over to node 2")
    got = [inbox.get(timeout=WAIT).payload.decode() for _ in range(10)]
    if got != [str(n) for n in range(10)]:
        fail(f"queued messages: {got}")
    moved.disconnect()
    moved.loop_stop()

    v5 = client("paho-v5", protocol=mqtt.MQTTv5)
    v5.username_pw_set("paul", "pw")
    v5, _, _ = connected(v5, port2, clean_start=False)
    with urllib.request.urlopen(f"http://127.0.0.1:{http1}/v1/users/paul", timeout=WAIT) as r:
        seen = json.load(r)
    conns = [(c["client_id"], c["node"]) for c in seen["connections"]]
    if conns != [("paho-v5", 2)]:
        fail(f"node 1's presence of paul: {seen}")
    v5.disconnect()
    v5.loop_stop()
    print("paho: session moved between nodes with its 10 messages; presence is cluster-wide")


if __name__ == "__main__":
    main()
