#!/usr/bin/env python3
"""A fleet under faults: three Tether nodes, Redis and a Kafka-protocol
broker (tansu), each in a network namespace of its own on one bridge, with
the clients in another; faults on a schedule, alone and two at a time; a
paho-mqtt workload that logs what the clients saw (`faults_workload.py`);
and a checker that reads only that log (`faults_check.py`).

  sudo python3 bench/scripts/faults.py --schedule short            # about a minute
  sudo python3 bench/scripts/faults.py --schedule ci               # each kind alone (cargo test)
  sudo python3 bench/scripts/faults.py --schedule soak --minutes 30
  sudo python3 bench/scripts/faults.py --schedule one --fault redis-restart

Faults: a node cut off from Redis, from Kafka, from its clients or from the
other nodes (nftables drops in the node's namespace: silent, like a dead
link); random loss on a node's link (nftables `numgen`); a slow link (`tbf`
rate limit); SIGSTOP of a node past its lease; kill -9 and restart of a
node; a Redis restart (AOF, fsync always); a Kafka pause (SIGSTOP of
tansu). This kernel has no `netem` (CONFIG_NET_SCH_NETEM unset), so delay
and jitter are not among them.

Writes a table, fault by invariant, with counts (a violation counts
against every fault active within `BLAME_S` before it), and exits 1 if any
invariant broke. Needs root, nftables and tansu; everything it creates
(namespaces, processes) it removes, by name and PID.
"""
import argparse, json, os, random, re, shutil, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faults_check  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A node's lease (the least allowed): partitions and pauses must outlast it.
NODE_LEASE_S = 3
# The per-user cap the workload's capped user meets.
CAP = 2
# Debian's interpreter, which has python3-paho-mqtt (one earlier on PATH
# may not).
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
# The nodes' HTTP API listens beyond loopback, so it wants a token.
API_TOKEN = "fault-harness-token"
# A violation is blamed on every fault active up to this long before it
# (takeovers wait a lease plus the 5 s skew margin).
BLAME_S = 15.0
# After the last fault heals: for the cluster to settle before the
# workload's traffic ends.
SETTLE_S = 15.0
# How long faults last in the soak.
SOAK_FAULT_S = (4.0, 12.0)
SOAK_GAP_S = (20.0, 60.0)
# Each node's `session.max_queued_messages` (the default is 1,000). A node
# cut off from Kafka delivers what its publishers sent meanwhile, and what
# the others sent it, in one burst when it is back (60 messages/s for 25 s
# of `--lasts 25` is 1,500), and copies handed on around a move come
# twice: past the bound a session drops them, counted
# (`tether_dropped_queue_full_total`, in the report), as README's
# slow-consumer policy says. The harness checks the cluster, not that
# policy, so the bound holds the longest fault's backlog several times.
SESSION_QUEUE = 20_000


def sh(*cmd, check=True):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"faults.py: {' '.join(cmd)} failed: {r.stderr.strip()}")
    return r.stdout


class Net:
    """Namespaces on one bridge; addresses 10.213.N.x/24 with N from the PID,
    so concurrent runs do not meet."""

    MEMBERS = {"redis": 2, "kafka": 3, "n1": 11, "n2": 12, "n3": 13, "clients": 100}

    def __init__(self):
        self.tag = f"tf{os.getpid()}"
        self.net = f"10.213.{os.getpid() % 200 + 20}"
        self.hub = f"{self.tag}-hub"
        self.made = []

    def ns(self, member):
        return f"{self.tag}-{member}"

    def ip(self, member):
        return f"{self.net}.{self.MEMBERS[member]}"

    def up(self):
        sh("ip", "netns", "add", self.hub)
        self.made.append(self.hub)
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        for m in self.MEMBERS:
            ns = self.ns(m)
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", self.hub, "link", "add", f"h-{m}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", self.hub, "link", "set", f"h-{m}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(m)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.rules = {m: {"drop": set(), "loss": 0} for m in self.MEMBERS}

    def apply(self, member):
        """Rewrites `member`'s nftables table from its fault state."""
        ns, r = self.ns(member), self.rules[member]
        lines = ["table inet faults", "delete table inet faults", "table inet faults {",
                 " chain in { type filter hook input priority 0; policy accept;"]
        lines += [f"  ip saddr {self.ip(o)} drop" for o in sorted(r["drop"])]
        if r["loss"]:
            lines.append(f"  numgen random mod 100 < {r['loss']} drop")
        lines += [" }", " chain out { type filter hook output priority 0; policy accept;"]
        lines += [f"  ip daddr {self.ip(o)} drop" for o in sorted(r["drop"])]
        if r["loss"]:
            lines.append(f"  numgen random mod 100 < {r['loss']} drop")
        lines += [" }", "}"]
        p = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input="\n".join(lines),
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"faults.py: nft in {ns}: {p.stderr.strip()}")

    def cut(self, member, others, on):
        for o in others:
            (self.rules[member]["drop"].add if on else self.rules[member]["drop"].discard)(o)
        self.apply(member)

    def loss(self, member, percent):
        self.rules[member]["loss"] = percent
        self.apply(member)

    def rate(self, member, kbit):
        ns = self.ns(member)
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
        if kbit:
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
               "rate", f"{kbit}kbit", "burst", "16kb", "latency", "400ms")

    def down(self):
        for ns in reversed(self.made):
            sh("ip", "netns", "del", ns, check=False)


class Fleet:
    def __init__(self, net, tether, workdir, node_log="info", monitor=False):
        self.net, self.tether, self.dir = net, tether, workdir
        self.node_log, self.monitor = node_log, monitor
        self.procs = {}

    def spawn(self, name, member, cmd, env=None):
        log = open(os.path.join(self.dir, f"{name}.log"), "ab")
        full = ["ip", "netns", "exec", self.net.ns(member)] + cmd
        # `ip netns exec` execs the command: the PID is the process's own.
        # The nodes' log level is `--node-log`'s: a RUST_LOG of the caller's
        # would reach tansu too (gigabytes of it in a minute).
        base = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
        p = subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, env={**base, **(env or {})})
        self.procs[name] = p
        return p

    def wait_port(self, member, port, what, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = subprocess.run(["ip", "netns", "exec", self.net.ns("clients"), "bash", "-c",
                                f"exec 3<>/dev/tcp/{self.net.ip(member)}/{port}"], capture_output=True)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise SystemExit(f"faults.py: {what} did not listen on {self.net.ip(member)}:{port} (see {self.dir})")

    def redis(self):
        self.spawn("redis", "redis", ["redis-server", "--bind", self.net.ip("redis"), "--port", "6379",
                                      "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                                      "--dir", self.dir, "--protected-mode", "no"])
        self.wait_port("redis", 6379, "redis-server")
        if self.monitor:
            # Every command Redis runs, with its time, for whoever traces a
            # violation to the store (a restarted Redis gets a new one).
            self.spawn("redis.monitor", "redis", ["redis-cli", "-h", self.net.ip("redis"), "monitor"])

    def kafka(self):
        url = f"tcp://{self.net.ip('kafka')}:9092"
        self.spawn("kafka", "kafka", ["tansu", "broker", "--listener-url", url, "--advertised-listener-url", url,
                                      "--storage-engine", "memory://tansu/"])
        self.wait_port("kafka", 9092, "tansu")
        for topic, parts in [("tf.interest", 1)] + [(f"tf.node.{i}", 2) for i in (1, 2, 3)]:
            sh("ip", "netns", "exec", self.net.ns("kafka"), "tansu", "topic", "create", "--broker", url,
               "--partitions", str(parts), topic)

    def node(self, i):
        env = {
            "TETHER_NODE__ID": str(i), "TETHER_NODE__CORES": "1",
            "TETHER_LISTENERS__TCP": "0.0.0.0:1883", "TETHER_HTTP__LISTEN": "0.0.0.0:8080",
            "TETHER_HTTP__TOKENS": f'["{API_TOKEN}"]',
            "TETHER_WEBSOCKET__ENABLED": "false", "TETHER_SYS__INTERVAL_SECS": "0",
            "TETHER_STORE__KIND": '"redis"', "TETHER_REDIS__URLS": f"redis://{self.net.ip('redis')}:6379/",
            "TETHER_PRESENCE__NODE_LEASE_SECS": str(NODE_LEASE_S), "TETHER_PRESENCE__LEASE_SECS": "3",
            "TETHER_LIMITS__MAX_CONNECTIONS_PER_USER": str(CAP),
            "TETHER_SESSION__MAX_QUEUED_MESSAGES": str(SESSION_QUEUE),
            "TETHER_KAFKA__BROKERS": f'"{self.net.ip("kafka")}:9092"',
            "TETHER_KAFKA__CLUSTER": '{node_topic = "tf.node.%n", interest_topic = "tf.interest"}',
            "TETHER_KAFKA__CONSUMER": '{"fetch.wait.max.ms" = "10"}',
            "TETHER_LOG__LEVEL": self.node_log,
        }
        self.spawn(f"n{i}", f"n{i}", [self.tether], env)
        self.wait_port(f"n{i}", 1883, f"node {i}")

    def signal(self, name, sig):
        p = self.procs.get(name)
        if p and p.poll() is None:
            os.kill(p.pid, sig)

    def stop(self):
        for name, p in self.procs.items():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                os.kill(p.pid, signal.SIGKILL)
                p.wait()


class Faults:
    """Each fault is (name, start, heal): `start` breaks, `heal` undoes."""

    def __init__(self, net, fleet):
        self.net, self.fleet = net, fleet

    def make(self, kind, node):
        n, net, fl = f"n{node}", self.net, self.fleet
        others = [f"n{i}" for i in (1, 2, 3) if i != node]
        table = {
            "partition-redis": (lambda: net.cut(n, ["redis"], True), lambda: net.cut(n, ["redis"], False)),
            "partition-kafka": (lambda: net.cut(n, ["kafka"], True), lambda: net.cut(n, ["kafka"], False)),
            "partition-clients": (lambda: net.cut(n, ["clients"], True), lambda: net.cut(n, ["clients"], False)),
            "partition-nodes": (lambda: net.cut(n, others, True), lambda: net.cut(n, others, False)),
            "loss": (lambda: net.loss(n, 20), lambda: net.loss(n, 0)),
            "slow-link": (lambda: net.rate(n, 256), lambda: net.rate(n, 0)),
            "pause": (lambda: fl.signal(n, signal.SIGSTOP), lambda: fl.signal(n, signal.SIGCONT)),
            "kill-restart": (lambda: (fl.signal(n, signal.SIGKILL), fl.procs[n].wait()), lambda: fl.node(node)),
            "redis-restart": (lambda: (fl.signal("redis", signal.SIGTERM), fl.procs["redis"].wait()), fl.redis),
            "kafka-pause": (lambda: fl.signal("kafka", signal.SIGSTOP), lambda: fl.signal("kafka", signal.SIGCONT)),
        }
        start, heal = table[kind]
        label = kind if kind in ("redis-restart", "kafka-pause") else f"{kind} n{node}"
        return label, start, heal


KINDS = ["partition-redis", "partition-kafka", "partition-clients", "partition-nodes", "loss",
         "slow-link", "pause", "kill-restart", "redis-restart", "kafka-pause"]


def schedule(kind, minutes, rng, fault=None, node=1, lasts=10):
    """[(at_s, [(kind, node)], lasts_s)]: one fault or two at once."""
    if kind == "one":
        # One fault alone, to look at it closely.
        return [(10, [(fault, node)], lasts)]
    if kind == "ci":
        # `cargo test`'s (tests/faults.rs): every kind of the short schedule,
        # the kill and the Kafka pause each alone; the soak pairs them.
        return [
            (8, [("partition-redis", 1)], 8),
            (22, [("pause", 2)], 7),
            (36, [("kill-restart", 3)], 5),
            (48, [("partition-clients", 1), ("loss", 2)], 6),
            (60, [("kafka-pause", 0)], 5),
        ]
    if kind == "short":
        return [
            (8, [("partition-redis", 1)], 8),
            (22, [("pause", 2)], 7),
            (36, [("kill-restart", 3), ("kafka-pause", 0)], 5),
            (48, [("partition-clients", 1), ("loss", 2)], 6),
        ]
    plan, t = [], 10.0
    while t < minutes * 60 - SETTLE_S:
        kinds = rng.sample(KINDS, rng.choice([1, 2]))
        nodes = rng.sample([1, 2, 3], len(kinds))
        lasts = rng.uniform(*SOAK_FAULT_S)
        plan.append((t, list(zip(kinds, nodes)), lasts))
        t += lasts + rng.uniform(*SOAK_GAP_S)
    return plan


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedule", choices=["short", "ci", "soak", "one"], default="short")
    ap.add_argument("--fault", choices=KINDS, help="with --schedule one: the fault")
    ap.add_argument("--node", type=int, default=1, help="with --schedule one: the node it strikes")
    ap.add_argument("--lasts", type=float, default=10, help="with --schedule one: how long it lasts (s)")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--tether", default=os.path.join(ROOT, "target/release/tether"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--report", help="append the table (markdown) to this file")
    ap.add_argument("--keep", action="store_true", help="keep the logs' directory")
    ap.add_argument("--node-log", default="info",
                    help="the nodes' log filter, e.g. 'info,tether::adapters::redis=debug'")
    ap.add_argument("--redis-monitor", action="store_true",
                    help="log every command Redis runs (redis-cli monitor) to redis.monitor.log")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("faults.py: needs root (network namespaces, nftables)")
    for tool in ("nft", "tansu", "redis-server", "tc"):
        if not shutil.which(tool):
            raise SystemExit(f"faults.py: needs {tool} (apt-get install -y nftables redis-server iproute2; "
                             "tansu: cargo install tansu --version 0.6.0 --features dynostore --locked)")
    rng = random.Random(a.seed)
    if a.schedule == "one" and not a.fault:
        raise SystemExit("faults.py: --schedule one needs --fault KIND")
    plan = schedule(a.schedule, a.minutes, rng, a.fault, a.node, a.lasts)
    duration = (plan[-1][0] + plan[-1][2] + SETTLE_S) if plan else 60
    workdir = tempfile.mkdtemp(prefix="tether-faults-")
    net = Net()
    fleet = Fleet(net, a.tether, workdir, a.node_log, a.redis_monitor)
    faults = Faults(net, fleet)
    active, timeline = [], []
    try:
        net.up()
        fleet.redis()
        fleet.kafka()
        for i in (1, 2, 3):
            fleet.node(i)
        log = os.path.join(workdir, "events.jsonl")
        nodes = ",".join(f"{net.ip(f'n{i}')}:1883" for i in (1, 2, 3))
        http = ",".join(f"{net.ip(f'n{i}')}:8080" for i in (1, 2, 3))
        work = fleet.spawn("workload", "clients", [PYTHON, os.path.join(ROOT, "bench/scripts/faults_workload.py"),
                                                   "--nodes", nodes, "--http", http, "--token", API_TOKEN, "--log", log,
                                                   "--duration", str(duration), "--seed", str(a.seed)])
        t0 = time.monotonic()
        print(f"faults.py: {len(plan)} fault steps over {duration:.0f} s; logs in {workdir}", file=sys.stderr)
        for at, kinds, lasts in plan:
            time.sleep(max(0.0, at - (time.monotonic() - t0)))
            made = [faults.make(k, n) for k, n in kinds]
            for label, start, _ in made:
                start()
            began = time.monotonic() - t0
            print(f"[{began:6.1f}s] {' + '.join(m[0] for m in made)} for {lasts:.0f} s", file=sys.stderr)
            time.sleep(lasts)
            for label, _, heal in made:
                heal()
                timeline.append((label, began, time.monotonic() - t0))
        work.wait(timeout=duration + 120)
        # Each node's figures at the end, beside its log, for whoever reads
        # a violation (the checker never does).
        for i in (1, 2, 3):
            with open(os.path.join(workdir, f"n{i}.metrics"), "w") as f:
                subprocess.run(["ip", "netns", "exec", net.ns("clients"), "curl", "-s", "-m", "5",
                                "-H", f"Authorization: Bearer {API_TOKEN}",
                                f"http://{net.ip(f'n{i}')}:8080/metrics"], stdout=f, check=False)
    finally:
        fleet.stop()
        net.down()
    events = faults_check.load(log)
    subs = sorted({e["c"] for e in events if e.get("c", "").startswith("sub-")})
    found = faults_check.check(events, subs, cap_user="capped", cap=CAP)
    table = report(found, timeline, events, a, duration, broker_defects(workdir),
                   figure(workdir, "tether_dropped_queue_full_total"))
    print(table)
    if a.report:
        with open(a.report, "a") as f:
            f.write(table + "\n")
    failed = any(found[i] for i in faults_check.INVARIANTS)
    if not a.keep and not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if failed else 0)


def figure(workdir, name):
    """A figure summed over the three nodes' metrics at the end (every
    sample of it: per core too)."""
    total = 0
    for i in (1, 2, 3):
        try:
            with open(os.path.join(workdir, f"n{i}.metrics")) as f:
                for line in f:
                    if line.startswith(name + " ") or line.startswith(name + "{"):
                        total += int(float(line.split()[-1]))
        except OSError:
            pass
    return total


def broker_defects(workdir):
    """What the nodes saw of the broker's offsets: records served at an
    offset their partition had passed (`tether_kafka_offsets_repeated_total`)
    gaps the nodes passed over (`tether_kafka_offsets_skipped_total`: the
    harness's topics have no transactions and no compaction, so a gap is
    records never served), and gaps an inbox's re-read filled
    (`tether_kafka_gaps_filled_total`). Broker defects, around which copies
    can be lost. The checker never reads them; the report names them beside
    what the clients saw. The counters start again with a node that
    restarts, so the nodes' logs count too: one line per event, or per
    burst with `held_back` more."""
    logged = {"repeated": 0, "skipped": 0, "filled": 0}
    lines = {"repeated": "served an offset again", "skipped": "served no records between two offsets",
             "filled": "served a gap's records when read again"}
    for i in (1, 2, 3):
        try:
            with open(os.path.join(workdir, f"n{i}.log"), errors="replace") as f:
                for line in f:
                    for kind, words in lines.items():
                        if words in line:
                            held = re.search(r"held_back=(\d+)", line)
                            logged[kind] += 1 + (int(held.group(1)) if held else 0)
        except OSError:
            pass
    return (max(logged["repeated"], figure(workdir, "tether_kafka_offsets_repeated_total")),
            max(logged["skipped"], figure(workdir, "tether_kafka_offsets_skipped_total")),
            max(logged["filled"], figure(workdir, "tether_kafka_gaps_filled_total")))


def report(found, timeline, events, a, duration, broker=(0, 0, 0), queue_full=0):
    acked = sum(1 for e in events if e["e"] == "puback")
    delivered = sum(1 for e in events if e["e"] == "deliver")
    takeovers = sum(1 for e in events if e["e"] == "connack" and e["c"].startswith("sub-") and e.get("present"))
    labels = sorted({label.split(" ")[0] for label, _, _ in timeline})
    columns = faults_check.INVARIANTS + faults_check.ADMITTED
    rows = ["| fault | times | " + " | ".join(faults_check.INVARIANTS)
            + " | " + " | ".join(f"{a} (admitted)" for a in faults_check.ADMITTED) + " |",
            "| --- | ---: | " + " | ".join("---:" for _ in columns) + " |"]
    for kind in labels:
        spans = [(s, e) for label, s, e in timeline if label.split(" ")[0] == kind]
        counts = []
        for inv in columns:
            n = 0
            for t, _ in found[inv]:
                if any(s <= t <= e + BLAME_S for s, e in spans):
                    n += 1
            counts.append(str(n))
        rows.append(f"| {kind} | {len(spans)} | " + " | ".join(counts) + " |")
    rows.append("| **all (whole run)** | | " + " | ".join(str(len(found[i])) for i in columns) + " |")
    head = (f"Fault run: schedule {a.schedule}, seed {a.seed}, {duration:.0f} s; "
            f"{acked} messages acknowledged, {delivered} deliveries, {takeovers} resumed sessions.\n")
    detail = "".join(f"\n- {inv}: {v}" for inv in faults_check.INVARIANTS for _, v in found[inv][:5])
    rec = faults_check.recovery(events, timeline)
    fmt = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
    times = ["| fault step | at (s) | longest takeover (s) | node back after heal (s) |",
             "| --- | ---: | ---: | ---: |"]
    times += [f"| {label} | {start:.0f} | {fmt(rec[label]['takeover_s'])} | {fmt(rec[label]['back_s'])} |"
              for label, start, _ in timeline]
    repeats, skips, filled = broker
    broker = (f"\n\nThe broker served {repeats} record(s) at an offset its partition had passed "
              f"(`tether_kafka_offsets_repeated_total`) and left {skips} gap(s) in a partition's offsets "
              "(`tether_kafka_offsets_skipped_total`): broker defects, around which copies can be lost "
              "or doubled by the broker, whatever the gateway does." if repeats or skips else "")
    broker += (f"\n\nThe nodes read {filled} gap(s) in an inbox's offsets again and the broker served "
               "them then (`tether_kafka_gaps_filled_total`): nothing lost there." if filled else "")
    dropped = (f"\n\nSessions' queues dropped {queue_full} QoS 1/2 message(s) "
               f"(`tether_dropped_queue_full_total`; `session.max_queued_messages` = {SESSION_QUEUE}): "
               "counted drops, which the checker sees as lost." if queue_full else "")
    return (head + "\n" + "\n".join(rows) + ("\n\nFirst violations:" + detail if detail else "") + broker
            + dropped
            + "\n\nRecovery, from the clients' side (`faults_check.recovery`):\n\n" + "\n".join(times) + "\n")


if __name__ == "__main__":
    main()
