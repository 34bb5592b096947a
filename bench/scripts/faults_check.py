"""The fault harness's checker: reads only what the clients saw (the
workload's event log, JSON lines) and the schedule of faults, never the
gateway's internals, and says which promise broke, when.

Events (`t` is seconds on the workload's monotonic clock):
- `{"e":"connack","c":client,"k":conn,"node":n,"t":..,"present":bool}`
- `{"e":"refused","c":client,"k":conn,"node":n,"t":..,"rc":code}`
- `{"e":"suback","c":client,"k":conn,"t":..}`
- `{"e":"send","c":publisher,"seq":n,"t":..}` (first send of a message)
- `{"e":"puback","c":publisher,"seq":n,"t":..}`
- `{"e":"deliver","c":client,"k":conn,"pub":publisher,"seq":n,"t":..}`
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
3. `two_owners`: after a connection of a client id got its CONNACK, no
   older connection of that id delivers anything (beyond `SETTLE_S`, the
   frames already on their way when the takeover completed).
4. `over_cap`: no more than the cap of one user's connections are open at
   once for longer than `SETTLE_S` (a client learns of its eviction a
   moment after the server acted).
5. `presence`: once the faults healed and a presence lease passed, every
   node lists exactly the capped user's connections the clients hold.
"""
import json
from collections import defaultdict

# Frames written before a takeover or an eviction completed can still be
# read by the old connection's client this long after: loopback and a
# scheduler tick on a 2-CPU machine, with margin.
SETTLE_S = 0.25

INVARIANTS = ("acked_lost", "order", "two_owners", "over_cap", "presence")


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def check(events, persistent, cap_user=None, cap=0):
    """Violations per invariant: {name: [(t, description), ...]}, `t` the
    time (s) the broken promise shows in the log."""
    out = {name: [] for name in INVARIANTS}
    sent, acked = {}, set()
    first_suback = {}
    firsts = defaultdict(list)          # (sub, pub) -> first-copy seqs, in order
    seen = defaultdict(set)             # sub -> {(pub, seq)}
    connacks = defaultdict(list)        # client -> [(t, conn)]
    delivers = defaultdict(list)        # client -> [(t, conn)]
    life = {}                           # (client, conn) -> [start, end]
    for ev in events:
        e = ev["e"]
        if e == "send":
            sent.setdefault((ev["c"], ev["seq"]), ev["t"])
        elif e == "puback":
            acked.add((ev["c"], ev["seq"]))
        elif e == "suback":
            first_suback.setdefault(ev["c"], ev["t"])
        elif e == "connack":
            connacks[ev["c"]].append((ev["t"], ev["k"]))
            life[(ev["c"], ev["k"])] = [ev["t"], None]
        elif e == "down":
            if (ev["c"], ev["k"]) in life:
                life[(ev["c"], ev["k"])][1] = ev["t"]
        elif e == "deliver":
            key = (ev["pub"], ev["seq"])
            delivers[ev["c"]].append((ev["t"], ev["k"]))
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
                out["order"].append((t, f"{sub}: {pub}#{b} came after {pub}#{a} (at {t:.2f} s)"))

    for client, acks in connacks.items():
        # When each connection was taken over: the first CONNACK of any
        # newer connection of the same client id.
        taken, earliest = {}, float("inf")
        for t_new, k_new in sorted(acks, key=lambda a: -a[1]):
            taken[k_new] = earliest
            earliest = min(earliest, t_new)
        for t, k in delivers.get(client, []):
            if t > taken.get(k, float("inf")) + SETTLE_S:
                out["two_owners"].append((t,
                    f"{client}: connection {k} delivered at {t:.2f} s, after a newer one took over at {taken[k]:.2f} s"))

    if cap_user and cap:
        spans = sorted((s, e if e is not None else end) for (c, _), (s, e) in life.items() if c.startswith(cap_user))
        # Ends before starts at one instant: a client that saw its eviction
        # as the newcomer connected was not over the cap.
        points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
        n, over_since, most = 0, None, 0
        for t, d in points:
            n += d
            if n > cap and over_since is None:
                over_since, most = t, n
            most = max(most, n)
            if n <= cap and over_since is not None:
                if t - over_since > SETTLE_S:
                    out["over_cap"].append((over_since,
                        f"{most} connections of {cap_user} open from {over_since:.2f} s to {t:.2f} s (cap {cap})"))
                over_since = None

    held = {c for (c, _), (s, e) in life.items() if cap_user and c.startswith(cap_user) and e is None}
    for ev in events:
        if ev["e"] == "presence":
            listed = set(ev["clients"])
            if listed != held:
                out["presence"].append((ev["t"],
                    f"node {ev['node']} lists {sorted(listed)} for {ev['user']}, the clients hold {sorted(held)}"))
    return out
