"""The fault harness's checker: reads only what the clients saw (the
workload's event log, JSON lines) and the schedule of faults, never the
gateway's internals, and says which promise broke, when.

Events (`t` is seconds on the workload's monotonic clock):
- `{"e":"connect","c":client,"k":conn,"node":n,"t":..}` (a CONNECT sent)
- `{"e":"connack","c":client,"k":conn,"node":n,"t":..,"present":bool}`
- `{"e":"refused","c":client,"k":conn,"node":n,"t":..,"rc":code}`
- `{"e":"suback","c":client,"k":conn,"t":..}`
- `{"e":"send","c":publisher,"seq":n,"t":..}` (first send of a message)
- `{"e":"puback","c":publisher,"seq":n,"t":..}`
- `{"e":"deliver","c":client,"k":conn,"pub":publisher,"seq":n,"t":..}`
- `{"e":"alive","c":client,"k":conn,"sent":s,"t":..}` (a heartbeat sent at
  `s` reached a capped user's connection: the server served it then)
- `{"e":"down","c":client,"k":conn,"t":..}` (the client saw its connection end)
- `{"e":"presence","user":u,"node":n,"t":..,"clients":[...]}` (a backend's
  `GET /v1/users/{u}`, after the faults healed)
- `{"e":"end","t":..}`

Invariants:
1. `acked_lost`: every acknowledged message reaches every persistent
   subscriber whose subscription was acknowledged before the message was
   first sent.
2. `order`: each subscriber's first copies of one publisher's acknowledged
   messages come in publish order.
3. `two_owners`: once a connection of a client id got its CONNACK, no
   older connection of that id delivers a message first sent after that
   (plus `SETTLE_S`). Judged by send time, not arrival: frames written
   before the takeover may arrive late on a lossy link.
4. `over_cap`: never are more than the cap of one user's connections all
   served after one moment (each heard a heartbeat sent later than
   `SETTLE_S` after the newest of them connected).
5. `presence`: once the faults healed and a presence lease passed, every
   node lists exactly the capped user's connections the clients hold.

Admitted (README states them; counted beside the invariants, not
failures):
- `order_after_move`: a first copy out of publish order that was sent
  around a move of its subscriber's session (from `MOVE_LEAD_S` before a
  resumed session's CONNACK to `HAND_ON_S` after it): a copy handed on to
  a session's new node (it left, or its node died) can come after
  messages published later.
- `order_across_publisher_connections`: a first copy out of publish order
  where the publisher sent the two messages on different connections (it
  reconnected, maybe to another node, in between): order holds per
  publisher connection, and a copy of an earlier one still on its way
  through Kafka can come after the new connection's, delivered on its
  node at once (README states it).
"""
import json
from collections import defaultdict

# Frames written before a takeover or an eviction completed can still be
# read by the old connection's client this long after: loopback and a
# scheduler tick on a 2-CPU machine, with margin.
SETTLE_S = 0.25

INVARIANTS = ("acked_lost", "order", "two_owners", "over_cap", "presence")
ADMITTED = ("order_after_move", "order_across_publisher_connections")
# A copy on its way to a session's old node when the session moved: sent
# up to this long before the move (the old node was paused, cut off, or
# dead for up to a fault's length)...
MOVE_LEAD_S = 15.0
# ...or this long after it (the nodes hand on copies sent up to 10 s after
# a departure: HAND_ON_MARGIN_MS, plus a second).
HAND_ON_S = 11.0


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def check(events, persistent, cap_user=None, cap=0):
    """Violations per invariant: {name: [(t, description), ...]}, `t` the
    time (s) the broken promise shows in the log."""
    out = {name: [] for name in INVARIANTS + ADMITTED}
    sent, acked = {}, set()
    sent_on = {}                        # (pub, seq) -> the publisher's connection
    first_suback = {}
    firsts = defaultdict(list)          # (sub, pub) -> first-copy seqs, in order
    seen = defaultdict(set)             # sub -> {(pub, seq)}
    connacks = defaultdict(list)        # client -> [(t, conn)]
    resumes = defaultdict(list)         # client -> [t of a CONNACK with its session present]
    delivers = defaultdict(list)        # client -> [(t, conn)]
    life = {}                           # (client, conn) -> [start, end]
    alive = {}                          # (client, conn) -> latest heartbeat send time heard
    for ev in events:
        e = ev["e"]
        if e == "send":
            sent.setdefault((ev["c"], ev["seq"]), ev["t"])
            sent_on.setdefault((ev["c"], ev["seq"]), ev.get("k"))
        elif e == "puback":
            acked.add((ev["c"], ev["seq"]))
        elif e == "suback":
            first_suback.setdefault(ev["c"], ev["t"])
        elif e == "connack":
            connacks[ev["c"]].append((ev["t"], ev["k"]))
            if ev.get("present"):
                resumes[ev["c"]].append(ev["t"])
            life[(ev["c"], ev["k"])] = [ev["t"], None]
        elif e == "alive":
            key = (ev["c"], ev["k"])
            alive[key] = max(alive.get(key, 0.0), ev["sent"])
        elif e == "down":
            if (ev["c"], ev["k"]) in life:
                life[(ev["c"], ev["k"])][1] = ev["t"]
        elif e == "deliver":
            key = (ev["pub"], ev["seq"])
            delivers[ev["c"]].append((ev["t"], ev["k"], key))
            if key not in seen[ev["c"]]:
                seen[ev["c"]].add(key)
                firsts[(ev["c"], ev["pub"])].append((ev["seq"], ev["t"]))
    end = max((ev["t"] for ev in events), default=0.0)

    for sub in persistent:
        since = first_suback.get(sub)
        if since is None:
            continue
        missing = sorted(k for k in acked if sent.get(k, 0) > since and k not in seen[sub])
        for pub, seq in missing:
            t = sent[(pub, seq)]
            out["acked_lost"].append((t, f"{sub} never got {pub}#{seq} (sent at {t:.2f} s, acknowledged)"))

    for (sub, pub), seqs in firsts.items():
        ordered = [(s, t) for s, t in seqs if (pub, s) in acked]
        for (a, _), (b, t) in zip(ordered, ordered[1:]):
            if b < a:
                sb = sent.get((pub, b), 0.0)
                moved = any(m - MOVE_LEAD_S <= sb <= m + HAND_ON_S and m <= t for m in resumes[sub])
                on_a, on_b = sent_on.get((pub, a)), sent_on.get((pub, b))
                if moved:
                    kind = "order_after_move"
                elif on_a is not None and on_b is not None and on_a != on_b:
                    kind = "order_across_publisher_connections"
                else:
                    kind = "order"
                out[kind].append((t, f"{sub}: {pub}#{b} came after {pub}#{a} (at {t:.2f} s)"))

    for client, acks in connacks.items():
        # When each connection was taken over: the first CONNACK of any
        # newer connection of the same client id.
        taken, earliest = {}, float("inf")
        for t_new, k_new in sorted(acks, key=lambda a: -a[1]):
            taken[k_new] = earliest
            earliest = min(earliest, t_new)
        for t, k, key in delivers.get(client, []):
            first_sent = sent.get(key)
            if first_sent is not None and first_sent > taken.get(k, float("inf")) + SETTLE_S:
                out["two_owners"].append((t,
                    f"{client}: connection {k} delivered {key[0]}#{key[1]} (sent at {first_sent:.2f} s) "
                    f"after a newer one took over at {taken[k]:.2f} s"))

    if cap_user and cap:
        # Each capped connection was served from its CONNACK until the send
        # time of the last heartbeat it heard.
        spans = {key: (life[key][0], last) for key, last in alive.items()
                 if key[0].startswith(cap_user) and key in life}
        for key, (start, _) in spans.items():
            moment = start + SETTLE_S
            served = sorted(c for c, (s0, last) in spans.items() if s0 <= moment <= last)
            if len(served) > cap:
                out["over_cap"].append((moment,
                    f"{len(served)} connections of {cap_user} all served after {moment:.2f} s (cap {cap}): "
                    + ", ".join(f"{c}/{k}" for c, k in served)))

    held = {c for (c, _), (s, e) in life.items() if cap_user and c.startswith(cap_user) and e is None}
    for ev in events:
        if ev["e"] == "presence":
            listed = set(ev["clients"])
            if listed != held:
                out["presence"].append((ev["t"],
                    f"node {ev['node']} lists {sorted(listed)} for {ev['user']}, the clients hold {sorted(held)}"))
    return out


def recovery(events, timeline):
    """What the faults cost in time, from the clients' side, per fault
    label (`timeline`: [(label, start, healed)]):
    - `takeover_s`: the longest wait from CONNECT to CONNACK of a session
      resumed on another node, of the CONNECTs sent while the fault lasted
      (a takeover from a paused or cut-off node waits for its lease);
    - `back_s`: for a fault on one node (`kind nN`), from the heal to that
      node's first CONNACK of a client connecting after it (a node that
      lost Redis refuses CONNECTs until its lease is renewed)."""
    sent_at = {}
    waits = []                                   # (CONNECT sent t, wait s)
    firsts = defaultdict(list)                   # node -> [connack t]
    for ev in events:
        key = (ev.get("c"), ev.get("k"))
        if ev["e"] == "connect":
            sent_at[key] = ev["t"]
        elif ev["e"] == "connack":
            firsts[ev["node"]].append((ev["t"], sent_at.get(key, ev["t"])))
            if ev.get("present") and key in sent_at:
                waits.append((sent_at[key], ev["t"] - sent_at[key]))
    out = {}
    for label, start, healed in timeline:
        takeover = max((w for t, w in waits if start <= t <= healed), default=None)
        back = None
        parts = label.split(" ")
        if len(parts) == 2 and parts[1].startswith("n"):
            node = int(parts[1][1:])
            after = [t for t, began in firsts.get(node, []) if began >= healed]
            back = min(after) - healed if after else None
        out[label] = {"takeover_s": takeover, "back_s": back}
    return out

