"""The fault harness's workload: paho-mqtt clients (an implementation
independent of Tether's) in the clients' namespace, logging what they see
as JSON lines for the checker (`faults_check.py` documents the events).

- persistent subscribers (clean session off, QoS 1 on `fleet/#`), each on a
  random node, moving to another now and then without closing the old
  connection (a takeover), and again whenever their connection ends;
- publishers (clean sessions) sending QoS 1 `pub:seq` to `fleet/<pub>` at
  a steady rate, from `ANNOUNCE_SETTLE_S` after every subscriber's first
  SUBACK, each message on the connection it was first sent on (no
  resend by a new connection, so a PUBACK names that send);
- clients of one capped user connecting and leaving at random, each
  hearing a heartbeat (QoS 0, stamped with its send time) as proof that the
  server still serves it;
- at the end, a backend's presence query of the capped user on every node.

A client waits up to `CONNACK_WAIT_S` for its CONNACK: a takeover from a
paused node waits for that node's lease.
"""
import argparse, json, random, threading, time, urllib.request

import paho.mqtt.client as mqtt

CONNACK_WAIT_S = 30.0
# A subscriber moves to another node after this many seconds, on average.
MOVE_EVERY_S = 15.0
# A capped user's client holds its connection this long, on average.
CAP_HOLD_S = 4.0
# Heartbeats to the capped user's connections: their proof of life.
HEARTBEAT_S = 0.2
KEEPALIVE_S = 10
# Publishers start this long after every subscriber's first SUBACK: a
# subscription reaches the other nodes once they read its announcement
# (README: a message published on another node before then is missed
# there), a fetch of the interest topic away.
ANNOUNCE_SETTLE_S = 1.0


class Log:
    def __init__(self, path):
        self.f = open(path, "w")
        self.lock = threading.Lock()
        self.t0 = time.monotonic()

    def now(self):
        return time.monotonic() - self.t0

    def write(self, e, **fields):
        fields["e"] = e
        fields.setdefault("t", round(self.now(), 4))
        with self.lock:
            self.f.write(json.dumps(fields) + "\n")
            self.f.flush()


class Conn:
    """One MQTT connection of a logical client: a fresh paho client, so
    every event names the connection it happened on."""

    def __init__(self, run, cid, k, node, clean, username=None, on_message=None):
        self.run, self.cid, self.k, self.node = run, cid, k, node
        self.connected = threading.Event()
        self.ended = threading.Event()
        self.ok = False
        c = mqtt.Client(client_id=cid, clean_session=clean, protocol=mqtt.MQTTv311)
        if username:
            c.username_pw_set(username, "x")
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = lambda *_: run.subacked(cid, k)
        if on_message:
            c.on_message = lambda _c, _u, m: on_message(self, m)
        self.client = c

    def _on_connect(self, _c, _u, flags, rc):
        if rc == 0:
            self.ok = True
            self.run.log.write("connack", c=self.cid, k=self.k, node=self.node,
                               present=bool(flags.get("session present")))
        else:
            self.run.log.write("refused", c=self.cid, k=self.k, node=self.node, rc=rc)
        self.connected.set()

    def _on_disconnect(self, _c, _u, _rc):
        if self.ok and not self.ended.is_set():
            self.run.log.write("down", c=self.cid, k=self.k)
        self.ended.set()
        self.connected.set()
        # No reconnect by paho under this connection's number: the client
        # opens a new Conn (from the loop's own thread, this only tells
        # the loop to end).
        self.client.loop_stop()

    def open(self):
        host, port = self.run.nodes[self.node]
        self.run.log.write("connect", c=self.cid, k=self.k, node=self.node)
        try:
            self.client.connect_async(host, port, keepalive=KEEPALIVE_S)
            self.client.loop_start()
        except OSError:
            self.ended.set()
            return False
        if not self.connected.wait(CONNACK_WAIT_S):
            self.run.log.write("refused", c=self.cid, k=self.k, node=self.node, rc=-1)
            self.close()
            return False
        return self.ok and not self.ended.is_set()

    def close(self):
        if self.ok and not self.ended.is_set():
            self.run.log.write("down", c=self.cid, k=self.k)
        self.ended.set()
        self.client.disconnect()
        self.client.loop_stop()


class Run:
    def __init__(self, a):
        self.a = a
        self.log = Log(a.log)
        self.nodes = {i + 1: (h, int(p)) for i, (h, p) in enumerate(x.split(":") for x in a.nodes.split(","))}
        self.http = {i + 1: x for i, x in enumerate(a.http.split(","))}
        self.stop = threading.Event()
        self.rng = random.Random(a.seed)
        self.subscribed, self.subscribed_lock = set(), threading.Lock()
        self.all_subscribed = threading.Event()

    def subacked(self, cid, k):
        self.log.write("suback", c=cid, k=k)
        with self.subscribed_lock:
            self.subscribed.add(cid)
            if len(self.subscribed) >= self.a.subs:
                self.all_subscribed.set()

    def node(self, other_than=None):
        choices = [n for n in self.nodes if n != other_than] or list(self.nodes)
        return self.rng.choice(choices)

    def subscriber(self, cid):
        k, node, conn, olds = 0, None, None, []
        # Moves until the traffic stops; then stays (connecting again if
        # its connection ends) until the end, to receive what is queued.
        while not self.done.is_set():
            if self.stop.is_set() and conn is not None and not conn.ended.is_set():
                time.sleep(0.1)
                continue
            k += 1
            node = self.node(other_than=node)
            new = Conn(self, cid, k, node, clean=False, on_message=self.delivered)
            if not new.open():
                new.close()
                time.sleep(0.5)
                continue
            # Again on every connection: harmless for a session that kept
            # it, needed for one the server lost.
            new.client.subscribe("fleet/#", qos=1)
            if conn is not None:
                # Left open for the server to close (a takeover); its
                # deliveries after the new CONNACK are what the checker
                # looks for.
                olds.append(conn)
            conn = new
            deadline = time.monotonic() + self.rng.expovariate(1 / MOVE_EVERY_S)
            while not self.done.is_set() and time.monotonic() < deadline and not conn.ended.is_set():
                time.sleep(0.1)
            for o in [o for o in olds if o.ended.is_set()]:
                o.close()
                olds.remove(o)
        for c in olds + [conn]:
            if c:
                c.close()

    def delivered(self, conn, m):
        try:
            pub, seq = m.payload.decode().split(":")
        except ValueError:
            return
        self.log.write("deliver", c=conn.cid, k=conn.k, pub=pub, seq=int(seq))

    def heard(self, conn, m):
        """A heartbeat reached a capped connection: proof that the server
        still served it after the heartbeat was sent (its payload)."""
        try:
            sent = float(m.payload.decode())
        except ValueError:
            return
        self.log.write("alive", c=conn.cid, k=conn.k, sent=sent)

    def heartbeat(self):
        """QoS 0 heartbeats to `hb/all` every HEARTBEAT_S, stamped with
        the send time, for the capped user's connections."""
        k = 0
        while not self.done.is_set():
            k += 1
            conn = Conn(self, "heartbeat", k, self.node(), clean=True)
            if not conn.open():
                conn.close()
                time.sleep(0.5)
                continue
            while not self.done.is_set() and not conn.ended.is_set():
                conn.client.publish("hb/all", f"{self.log.now():.4f}", qos=0)
                time.sleep(HEARTBEAT_S)
            conn.close()

    def publisher(self, cid):
        k, seq = 0, 0
        gap = 1.0 / self.a.rate
        self.all_subscribed.wait(CONNACK_WAIT_S)
        time.sleep(ANNOUNCE_SETTLE_S)
        while not self.stop.is_set():
            k += 1
            conn = Conn(self, cid, k, self.node(), clean=True)
            if not conn.open():
                conn.close()
                time.sleep(0.5)
                continue
            # paho calls on_publish holding its own lock, so ours is never
            # held across publish(): a PUBACK that beats publish()'s return
            # is parked in `early`.
            mids, early = {}, set()
            lock = threading.Lock()

            def acked(_c, _u, mid, mids=mids, early=early, lock=lock):
                with lock:
                    s = mids.pop(mid, None)
                    if s is None:
                        early.add(mid)
                if s is not None:
                    self.log.write("puback", c=cid, seq=s)

            conn.client.on_publish = acked
            while not self.stop.is_set() and not conn.ended.is_set():
                seq += 1
                self.log.write("send", c=cid, seq=seq, k=k)
                info = conn.client.publish(f"fleet/{cid}", f"{cid}:{seq}", qos=1)
                with lock:
                    now_acked = info.mid in early
                    if now_acked:
                        early.discard(info.mid)
                    else:
                        mids[info.mid] = seq
                if now_acked:
                    self.log.write("puback", c=cid, seq=seq)
                time.sleep(gap)
            conn.close()

    def capped(self, cid):
        k = 0
        while not self.stop.is_set():
            k += 1
            conn = Conn(self, cid, k, self.node(), clean=True, username=self.a.cap_user,
                        on_message=self.heard)
            if conn.open():
                conn.client.subscribe("hb/all", qos=0)
                hold = self.rng.expovariate(1 / CAP_HOLD_S)
                conn.ended.wait(hold)
                if self.stop.is_set():
                    # Held to the end: presence is checked against these.
                    self.final.append(conn)
                    return
            conn.close()
            time.sleep(self.rng.uniform(0.1, 1.0))

    def presence(self):
        for n, addr in self.http.items():
            try:
                req = urllib.request.Request(f"http://{addr}/v1/users/{self.a.cap_user}",
                                             headers={"Authorization": f"Bearer {self.a.token}"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    v = json.load(r)
                clients = [c["client_id"] for c in v.get("connections", [])]
            except OSError as e:
                clients = [f"unreachable: {e}"]
            self.log.write("presence", user=self.a.cap_user, node=n, clients=clients)

    def main(self):
        self.final = []
        self.done = threading.Event()
        threads = [threading.Thread(target=self.subscriber, args=(f"sub-{i}",)) for i in range(self.a.subs)]
        threads += [threading.Thread(target=self.publisher, args=(f"pub-{i}",)) for i in range(self.a.pubs)]
        threads += [threading.Thread(target=self.capped, args=(f"{self.a.cap_user}-{i}",)) for i in range(self.a.cap_clients)]
        threads.append(threading.Thread(target=self.heartbeat))
        for t in threads:
            t.daemon = True
            t.start()
        time.sleep(self.a.duration)
        # Publishers and movers stop; what was acknowledged has `drain_s`
        # to arrive, and presence its lease to converge.
        self.stop.set()
        time.sleep(self.a.drain)
        self.presence()
        self.log.write("end")
        self.done.set()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", required=True, help="host:port,... of the nodes' MQTT listeners")
    ap.add_argument("--http", required=True, help="host:port,... of their HTTP APIs")
    ap.add_argument("--token", default="", help="bearer token of the nodes' HTTP API")
    ap.add_argument("--log", required=True)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--drain", type=float, default=10, help="seconds after the traffic for deliveries and presence")
    ap.add_argument("--subs", type=int, default=4)
    ap.add_argument("--pubs", type=int, default=3)
    ap.add_argument("--rate", type=float, default=20, help="messages/s per publisher")
    ap.add_argument("--cap-user", default="capped")
    ap.add_argument("--cap-clients", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    Run(ap.parse_args()).main()
