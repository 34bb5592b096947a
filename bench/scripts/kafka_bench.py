#!/usr/bin/env python3
"""The Kafka bridge's benchmarks, run by bench/kafka.sh.

1. produce: MQTT -> Kafka at QoS 1 with the PUBACK after Kafka's delivery
   report, against a plain idempotent rdkafka producer writing to the same
   broker with the same keys and the same number of records in flight
   (`tether-bench kafka flood`): the machine's limit for that broker.
   Target: >= 80 % of the direct producer. Context rows: the same publishers
   against Tether with no route and against Mosquitto (PUBACK at once).
2. push: Kafka -> MQTT, records of a `to = "broadcast"` source reaching
   10,000 QoS 1 subscribers, against Mosquitto fanning the same rate of
   MQTT publishes out to as many subscribers.
3. cross: pub/sub across two nodes through a Kafka bus topic (mode 2),
   against the same pairs on one node with the same route: the highest
   rate, then p99 end-to-end latency at 10 % of it.

tansu runs on CPU 1. In produce, the client side (the direct producer, or
Tether with its publishers) runs on CPU 0, so both sides have the same
CPU. In push, Tether or Mosquitto has CPU 0 and the subscribers, the
producer and tansu share CPU 1. In cross, node 1 has CPU 0, node 2 CPU 1,
and the harness and tansu float. Every figure is the median of --rounds
rounds, each on a fresh broker and a fresh tansu. Summary on stdout and in
bench/RESULTS.md; every round's JSON in bench/results/kafka/.
"""
import argparse, datetime, json, os, platform, resource, shutil, statistics, subprocess, sys, tempfile, time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "target/release/tether-bench")
# TETHER_BIN: another build to measure (an A/B against the working tree).
TETHER = os.environ.get("TETHER_BIN", os.path.join(ROOT, "target/release/tether"))
OUT = os.path.join(ROOT, "bench/results/kafka")
BEGIN, END = "<!-- kafka:begin -->", "<!-- kafka:end -->"
BUS_BEGIN, BUS_END = "<!-- kafka-bus:begin -->", "<!-- kafka-bus:end -->"
# The consumers' fetch.wait.max.ms against tansu (see route_env).
TANSU_FETCH_WAIT_MS = 10
# How long subscribers get to connect and subscribe before traffic starts.
SETUP_SECS = 60
# Subscribers' traffic window beyond the publishers' (their clock starts
# once they are subscribed, a little before the publishers'), after which
# they drain what is still on its way.
TAIL_SECS = 3

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import free_port, wait_port, splice_results  # noqa: E402
from store_bench import cpu_secs  # noqa: E402


class Tansu:
    """A tansu broker of our own on a free port (memory storage)."""

    def __init__(self, cpu, topics):
        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = ["tansu", "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/", "--silent"]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu)] + cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)
        self.brokers = f"127.0.0.1:{self.port}"
        for name, partitions in topics:
            subprocess.run(["tansu", "topic", "create", "--broker", url, "--partitions", str(partitions), name],
                           check=True, stdout=subprocess.DEVNULL)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Broker:
    """Tether (one core) or Mosquitto, pinned to `cpu`."""

    def __init__(self, kind, cpu, env=None, node=1, tmp=None):
        self.port = free_port()
        self.http = free_port()
        if kind == "mosquitto":
            conf = os.path.join(tmp, f"mosquitto-{self.port}.conf")
            with open(conf, "w") as f:
                f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "max_connections -1\nmax_queued_messages 1000\nsys_interval 0\nlog_dest none\n")
            cmd = ["taskset", "-c", str(cpu), "mosquitto", "-c", conf]
            e = None
        else:
            cmd = ["taskset", "-c", str(cpu), TETHER]
            e = dict(os.environ)
            e.update(
                TETHER_NODE__ID=str(node),
                TETHER_NODE__CORES="1",
                TETHER_LISTENERS__TCP=f"127.0.0.1:{self.port}",
                TETHER_HTTP__LISTEN=f"127.0.0.1:{self.http}",
                TETHER_SYS__INTERVAL_SECS="0",
                TETHER_WEBSOCKET__ENABLED="false",
                TETHER_LOG__LEVEL="warn",
            )
            e.update(env or {})
        self.kind = kind
        self.proc = subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)
        if kind != "mosquitto":
            wait_port(self.http, self.proc)

    def metric(self, name):
        """Sum of a Tether metric over its labels."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5).read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(f"tether_{name} ") or line.startswith(f"tether_{name}{{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_metric(self, name, n, proc):
        """Until the metric reaches `n`, or the harness `proc` ended."""
        deadline = time.time() + SETUP_SECS
        while self.metric(name) < n:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"{name} stayed at {self.metric(name):.0f}, below {n}")
            time.sleep(0.05)

    def wait_subscriptions(self, n, proc):
        """Until `n` subscriptions are in, or the harness `proc` ended."""
        deadline = time.time() + SETUP_SECS
        while self.metric("subscriptions") < n:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"subscribers did not all subscribe ({self.metric('subscriptions'):.0f} of {n})")
            time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def bench(args, cpus=None):
    cmd = [BENCH] + args
    return cmd if cpus is None else ["taskset", "-c", cpus] + cmd


def load(path):
    with open(path) as f:
        return json.load(f)


def route_env(tansu, source=None, route=None):
    # tansu answers a fetch only when its wait is up, even with records in
    # hand (Kafka answers as soon as it has fetch.min.bytes), so Tether's
    # 100 ms default would be every record's latency floor here.
    env = {"TETHER_KAFKA__BROKERS": f'"{tansu.brokers}"',
           "TETHER_KAFKA__CONSUMER": f'{{"fetch.wait.max.ms" = "{TANSU_FETCH_WAIT_MS}"}}'}
    if route:
        env["TETHER_KAFKA__ROUTE"] = route
    if source:
        env["TETHER_KAFKA__SOURCE"] = source
    return env


def produce_round(kind, a, tmp, rnd):
    """One row of the produce comparison."""
    topic = "bench.produce"
    tansu = Tansu(1, [(topic, a.partitions)]) if kind in ("direct", "direct-bare", "tether-kafka", "tether-kafka-solo") else None
    path = os.path.join(OUT, f"produce.{kind}.{rnd}.json")
    try:
        if kind in ("direct", "direct-bare"):
            headers = ["--tether-headers"] if kind == "direct" else []
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(bench(["kafka", "flood", "-b", tansu.brokers, "-t", topic, "-d", str(a.secs),
                                  "-s", str(a.size), "-k", str(a.publishers)] + headers + [
                                  "--inflight", str(a.publishers * a.inflight), "--json", path], "0"),
                           check=True, stderr=subprocess.DEVNULL)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            r = load(path)
            return {"rate": r["rate"], "p99_ms": r["p99_ms"], "failed": r["failed"],
                    "cpu_us_per_msg": cpu * 1e6 / max(r["records"], 1), "json": path}
        env = None
        if kind.startswith("tether-kafka"):
            env = route_env(tansu, route=f'[{{filter = "bench/#", topic = "{topic}", key = "%c"}}]')
        node = Broker("mosquitto" if kind == "mosquitto" else "tether", 0, env, tmp=tmp)
        try:
            # The publishers share CPU 0 with the gateway, as the direct
            # producer's own record making does; "-solo" gives them CPU 1
            # (with tansu) and the gateway CPU 0 to itself.
            cpus = "1" if kind.endswith("-solo") else "0"
            cpu0 = cpu_secs(node.proc.pid)
            subprocess.run(bench(["pub", "-p", str(node.port), "-c", str(a.publishers), "-q", "1", "-r", "0",
                                  "--inflight", str(a.inflight), "-d", str(a.secs), "-s", str(a.size),
                                  "-t", "bench/%i", "--target-pid", str(node.proc.pid), "--json", path,
                                  "--quiet", "--cores", "1"], cpus))
            cpu = cpu_secs(node.proc.pid) - cpu0
            r = load(path)
            out = {"rate": r["acked_per_sec"], "p99_ms": r["ack_latency_us"]["p99"] / 1000,
                   "failed": r["published"] - r["acked"], "cpu": (r.get("target") or {}).get("cpu_percent"),
                   "cpu_us_per_msg": cpu * 1e6 / max(r["acked"], 1), "json": path}
            if kind.startswith("tether-kafka"):
                out["kafka_produced"] = node.metric("kafka_produced")
                out["kafka_timed_out"] = node.metric("kafka_timed_out")
            return out
        finally:
            node.stop()
    finally:
        if tansu:
            tansu.stop()


def push_round(kind, rate, a, tmp, rnd):
    """`rate` records/s: Kafka -> 10,000 subscribers (Tether), or as many
    MQTT publishes fanned out (Mosquitto)."""
    topic = "bench.push"
    path = os.path.join(OUT, f"push.{kind}.{rate:g}.{rnd}.json")
    traffic = a.secs
    if kind == "mosquitto":
        node = Broker("mosquitto", 0, tmp=tmp)
        try:
            subprocess.run(bench(["fanout", "-p", str(node.port), "-P", "1", "-c", str(a.subscribers),
                                  "-q", "1", "-r", str(rate), "-d", str(traffic), "-t", "broadcast",
                                  "-R", "0", "--target-pid", str(node.proc.pid), "--json", path,
                                  "--quiet", "--cores", "1"], "1"))
        finally:
            node.stop()
    else:
        tansu = Tansu(1, [(topic, 1)])
        node = Broker("tether", 0, route_env(tansu, source=f'[{{topic = "{topic}", to = "broadcast"}}]'))
        sub = None
        try:
            sub = subprocess.Popen(bench(["sub", "-p", str(node.port), "-c", str(a.subscribers), "-q", "1",
                                          "-t", "broadcast", "-R", "0", "-d", str(traffic + TAIL_SECS),
                                          "--target-pid", str(node.proc.pid), "--json", path, "--quiet",
                                          "--cores", "1"], "1"))
            node.wait_subscriptions(a.subscribers, sub)
            subprocess.run(bench(["kafka", "flood", "--harness", "-b", tansu.brokers, "-t", topic,
                                  "-d", str(traffic), "-r", str(rate), "-k", "1", "-s", "16"], "1"),
                           check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            consumed = node.metric("kafka_records_consumed_total")
            sub.wait()
        finally:
            if sub and sub.poll() is None:
                sub.kill()
                sub.wait()
            node.stop()
            tansu.stop()
    r = load(path)
    i = r["integrity"]
    # Deliveries over the producing window: every record times subscribers.
    received = r["received"]
    out = {"deliveries_per_sec": received / traffic, "received": received, "expected": i["expected"],
           "lost": i["lost"], "duplicates": i["duplicates"], "reordered": i["reordered"],
           "p99_ms": r["latency_us"]["p99"] / 1000, "p50_ms": r["latency_us"]["p50"] / 1000,
           "cpu": (r.get("target") or {}).get("cpu_percent"), "json": path}
    if kind != "mosquitto":
        out["records"] = consumed
    return out


def cross_round(kind, rate, a, tmp, rnd):
    """Pairs publishing on node 1 and subscribed on node 2 (cross) or node 1
    (same), through a Kafka bus; rate 0 = as fast as the window allows."""
    if a.bus:
        # [kafka.cluster]: copies only to the node whose clients subscribed.
        tansu = Tansu(None, [("tether.interest", 1), ("tether.node.1", a.partitions),
                             ("tether.node.2", a.partitions)])
        env = route_env(tansu)
        env["TETHER_KAFKA__CLUSTER"] = '{node_topic = "tether.node.%n"}'
    else:
        bus = "tether.bus"
        tansu = Tansu(None, [(bus, a.partitions)])
        env = route_env(tansu, route=f'[{{filter = "bench/#", topic = "{bus}", key = "%c"}}]',
                        source=f'[{{topic = "{bus}"}}]')
    n1 = Broker("tether", 0, env, node=1)
    n2 = Broker("tether", 1, env, node=2)
    tag = f"{kind}.{'max' if rate == 0 else 'moderate'}"
    sub_path = os.path.join(OUT, f"cross.{tag}.sub.{rnd}.json")
    pub_path = os.path.join(OUT, f"cross.{tag}.pub.{rnd}.json")
    sub = None
    try:
        target = n2 if kind == "cross" else n1
        sub = subprocess.Popen(bench(["sub", "-p", str(target.port), "-c", str(a.pairs), "-q", "1",
                                      "-t", "bench/%i", "-d", str(a.secs + TAIL_SECS), "--json", sub_path,
                                      "--quiet", "--cores", "1"]))
        target.wait_subscriptions(a.pairs, sub)
        if a.bus:
            # Node 1 has read the subscribers' announcements (a message
            # published before that stays on node 1: README, Limits).
            n1.wait_metric("kafka_cluster_interest_entries", a.pairs, sub)
        subprocess.run(bench(["pub", "-p", str(n1.port), "-c", str(a.pairs), "-q", "1", "-r", str(rate),
                              "--inflight", str(a.inflight), "-d", str(a.secs), "-s", "64", "-t", "bench/%i",
                              "--json", pub_path, "--quiet", "--cores", "1"]))
        sub.wait()
    finally:
        if sub and sub.poll() is None:
            sub.kill()
            sub.wait()
        n1.stop()
        n2.stop()
        tansu.stop()
    s, p = load(sub_path), load(pub_path)
    i = s["integrity"]
    return {"msgs_per_sec": s["received"] / max(p["traffic_secs"], 1e-9), "published": p["published"],
            "received": s["received"], "lost": i["lost"], "reordered": i["reordered"],
            "p50_ms": s["latency_us"]["p50"] / 1000, "p99_ms": s["latency_us"]["p99"] / 1000,
            "ack_p99_ms": p["ack_latency_us"]["p99"] / 1000, "json": sub_path}


def push_rates(a):
    return [float(x) for x in a.push_rates.split(",")]


def median(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--publishers", type=int, default=100)
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--subscribers", type=int, default=10000)
    ap.add_argument("--push-rates", default="5,20", help="records/s in push (x subscribers = deliveries/s)")
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--only", default="produce,push,cross")
    ap.add_argument("--bus", action="store_true",
                    help="cross through the cluster bus ([kafka.cluster]) instead of a mode 2 bus topic; "
                         "written to its own section of RESULTS.md")
    ap.add_argument("--bus-rates", default="276,1380,2760",
                    help="--bus: messages/s per publisher (276 x 50 = 10 % of mode 2's cross-node maximum, "
                         "1380 x 50 = half of it, 2760 x 50 = all of it)")
    ap.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the RESULTS.md section from bench/results/kafka/summary.json, running nothing")
    a = ap.parse_args()
    summary = os.path.join(OUT, "summary-bus.json" if a.bus else "summary.json")
    if a.render_only:
        with open(summary) as f:
            res = json.load(f)
        a.rounds = len(next(iter(next(iter(res.values())).values())))
        block = render(res, a, res.get("took", 0))
        print(block)
        if not a.no_write:
            write(a, block)
        return
    for tool in ("tansu", "mosquitto", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"kafka_bench: needs {tool} (tansu: cargo install tansu --version 0.6.0 "
                             "--features dynostore --locked; apt-get install -y mosquitto util-linux)")
    os.makedirs(OUT, exist_ok=True)
    only = set(a.only.split(","))
    started = time.time()
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "produce" in only:
            kinds = ("direct", "direct-bare", "tether-kafka", "tether-kafka-solo", "tether-plain", "mosquitto")
            rows = {k: [] for k in kinds}
            for rnd in range(a.rounds):
                for k in kinds:
                    r = produce_round(k, a, tmp, rnd)
                    rows[k].append(r)
                    print(f"[produce {k} round {rnd + 1}/{a.rounds}] {r['rate']:.0f}/s p99 {r['p99_ms']:.2f} ms",
                          flush=True)
            res["produce"] = rows
        if "push" in only:
            rows = {}
            for rate in push_rates(a):
                for rnd in range(a.rounds):
                    for k in ("tether", "mosquitto"):
                        r = push_round(k, rate, a, tmp, rnd)
                        rows.setdefault(f"{k}@{rate:g}", []).append(r)
                        print(f"[push {k} {rate:g} records/s round {rnd + 1}/{a.rounds}] "
                              f"{r['deliveries_per_sec']:.0f} deliveries/s lost {r['lost']} p99 {r['p99_ms']:.1f} ms",
                              flush=True)
            res["push"] = rows
        if "cross" in only and a.bus:
            # No maximum here: with the bus, same-node pub/sub never touches
            # Kafka, and unthrottled publishers only measure how fast slow
            # subscribers are disconnected. Fixed loads instead, the same
            # for both.
            rows = {}
            for rate in [float(x) for x in a.bus_rates.split(",")]:
                for rnd in range(a.rounds):
                    for k in ("same", "cross"):
                        r = cross_round(k, rate, a, tmp, rnd)
                        rows.setdefault(f"{k}@{rate:g}", []).append(r)
                        print(f"[bus {k} at {rate:g}/s per publisher round {rnd + 1}/{a.rounds}] "
                              f"{r['msgs_per_sec']:.0f} msg/s lost {r['lost']} p99 {r['p99_ms']:.1f} ms", flush=True)
            res["bus"] = rows
        elif "cross" in only:
            rows = {}
            for rnd in range(a.rounds):
                for k in ("same", "cross"):
                    r = cross_round(k, 0, a, tmp, rnd)
                    rows.setdefault(f"{k}-max", []).append(r)
                    print(f"[cross {k} max round {rnd + 1}/{a.rounds}] {r['msgs_per_sec']:.0f} msg/s "
                          f"lost {r['lost']} p99 {r['p99_ms']:.1f} ms", flush=True)
            # 10 % of the cross-node maximum, per publisher, for both.
            moderate = 0.1 * median(rows["cross-max"], "msgs_per_sec") / a.pairs
            for rnd in range(a.rounds):
                for k in ("same", "cross"):
                    r = cross_round(k, moderate, a, tmp, rnd)
                    rows.setdefault(f"{k}-moderate", []).append(r)
                    print(f"[cross {k} at {moderate:.0f}/s per publisher round {rnd + 1}/{a.rounds}] "
                          f"{r['msgs_per_sec']:.0f} msg/s p99 {r['p99_ms']:.1f} ms", flush=True)
            res["cross"] = rows
            res["cross_moderate_rate"] = moderate
    took = time.time() - started
    res["took"] = took
    res["run_at"] = f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M}"
    block = render(res, a, took)
    print()
    print(block)
    with open(summary, "w") as f:
        json.dump(res, f, indent=1)
    if not a.no_write:
        write(a, block)


def write(a, block):
    """Puts `block` into its section of bench/RESULTS.md (--bus has its own)."""
    if a.bus:
        splice_results(BUS_BEGIN, BUS_END, f"{BUS_BEGIN}\n{block}{BUS_END}",
                       "## Pub/sub across nodes by interest (issue 12)\n\nGenerated by `bench/kafka.sh --bus`.")
    else:
        splice_results(BEGIN, END, f"{BEGIN}\n{block}{END}",
                       "## The Kafka bridge (issue 12)\n\nGenerated by `bench/kafka.sh`.")


def render(res, a, took):
    uname = platform.uname()
    lines = [
        f"Run {res.get('run_at') or format(datetime.datetime.utcnow(), '%Y-%m-%d %H:%M')} UTC on {uname.node}, Linux {uname.release}, "
        f"{os.cpu_count()} CPUs; took {took / 60:.1f} min.",
        f"Command: `bench/kafka.sh --rounds {a.rounds}"
        f"{'' if a.only == 'produce,push,cross' else ' --only ' + a.only}{' --bus' if a.bus else ''}`. Broker: tansu 0.6 (memory "
        f"storage), {a.partitions} partitions; Tether's consumers with fetch.wait.max.ms = {TANSU_FETCH_WAIT_MS} "
        f"(tansu holds every fetch for its full wait). Medians of {a.rounds} rounds.",
        "",
    ]
    rows = res.get("produce")
    if rows:
        d, t = median(rows["direct"], "rate"), median(rows["tether-kafka"], "rate")
        ts = median(rows["tether-kafka-solo"], "rate")
        lines += [
            f"**MQTT -> Kafka, QoS 1, PUBACK after the delivery report** ({a.publishers} publishers x "
            f"{a.inflight} in flight, {a.size}-byte payloads, {a.secs} s; tansu on CPU 1, the client side on CPU 0):",
            "",
            "| sender | messages/s acknowledged | p99 to the acknowledgement | CPU per message (sender process) | not acknowledged |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| plain rdkafka producer (idempotent, same keys, window and headers), CPU 0 | {d:,.0f} | "
            f"{median(rows['direct'], 'p99_ms'):.1f} ms | {median(rows['direct'], 'cpu_us_per_msg'):.2f} us | "
            f"{sum(r['failed'] for r in rows['direct'])} |",
            f"| the same without headers (context) | {median(rows['direct-bare'], 'rate'):,.0f} | "
            f"{median(rows['direct-bare'], 'p99_ms'):.1f} ms | {median(rows['direct-bare'], 'cpu_us_per_msg'):.2f} us | |",
            f"| MQTT publishers -> Tether -> Kafka, both on CPU 0 | {t:,.0f} | {median(rows['tether-kafka'], 'p99_ms'):.1f} ms | "
            f"{median(rows['tether-kafka'], 'cpu_us_per_msg'):.2f} us | {sum(r['failed'] for r in rows['tether-kafka'])} |",
            f"| the same, publishers on CPU 1 (Tether alone on CPU 0) | {ts:,.0f} | "
            f"{median(rows['tether-kafka-solo'], 'p99_ms'):.1f} ms | {median(rows['tether-kafka-solo'], 'cpu_us_per_msg'):.2f} us | "
            f"{sum(r['failed'] for r in rows['tether-kafka-solo'])} |",
            f"| MQTT publishers -> Tether, no route (context) | {median(rows['tether-plain'], 'rate'):,.0f} | "
            f"{median(rows['tether-plain'], 'p99_ms'):.1f} ms | {median(rows['tether-plain'], 'cpu_us_per_msg'):.2f} us | |",
            f"| MQTT publishers -> Mosquitto (context) | {median(rows['mosquitto'], 'rate'):,.0f} | "
            f"{median(rows['mosquitto'], 'p99_ms'):.1f} ms | {median(rows['mosquitto'], 'cpu_us_per_msg'):.2f} us | |",
            "",
            f"Tether -> Kafka / direct producer: **{t / d:.2f}** with the publishers on Tether's CPU, **{ts / d:.2f}** "
            f"with Tether alone on its CPU (target >= 0.80: **{'met' if max(t, ts) >= 0.8 * d else 'missed'}**).",
            "",
        ]
    rows = res.get("push")
    if rows:
        lines += [
            f"**Kafka -> MQTT push to {a.subscribers:,} QoS 1 subscribers** (records/s for {a.secs} s, each to "
            "every subscriber; broker on CPU 0; Mosquitto gets the same rate as MQTT publishes):",
            "",
            "| records/s | path | deliveries/s | lost | p50 | p99 | broker CPU |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for rate in push_rates(a):
            for k, label in (("tether", "Kafka record -> Tether source (broadcast)"),
                             ("mosquitto", "MQTT publish -> Mosquitto (reference)")):
                t = rows[f"{k}@{rate:g}"]
                lines.append(
                    f"| {rate:g} | {label} | {median(t, 'deliveries_per_sec'):,.0f} | {sum(r['lost'] for r in t)} | "
                    f"{median(t, 'p50_ms'):.1f} ms | {median(t, 'p99_ms'):.1f} ms | {median(t, 'cpu'):.0f} % |")
        lines.append("")
    rows = res.get("cross")
    if rows:
        rate = res["cross_moderate_rate"]
        sm, cm = median(rows["same-max"], "msgs_per_sec"), median(rows["cross-max"], "msgs_per_sec")
        lines += [
            f"**Pub/sub across nodes through Kafka** ({a.pairs} QoS 1 pairs, 64-byte payloads, "
            + ("the cluster bus: copies only to the node with subscribers, by announced interest"
               if a.bus else "route and source on one bus topic")
            + "; node 1 on CPU 0, node 2 on CPU 1, tansu and the harness floating):",
            "",
            "| subscribers on | max messages/s | lost | p99 at max | p50 at 10 % | p99 at 10 % | publishers' PUBACK p99 at 10 % |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| the publishers' node | {sm:,.0f} | {sum(r['lost'] for r in rows['same-max'])} | "
            f"{median(rows['same-max'], 'p99_ms'):.1f} ms | {median(rows['same-moderate'], 'p50_ms'):.1f} ms | "
            f"{median(rows['same-moderate'], 'p99_ms'):.1f} ms | {median(rows['same-moderate'], 'ack_p99_ms'):.1f} ms |",
            f"| the other node | {cm:,.0f} | {sum(r['lost'] for r in rows['cross-max'])} | "
            f"{median(rows['cross-max'], 'p99_ms'):.1f} ms | {median(rows['cross-moderate'], 'p50_ms'):.1f} ms | "
            f"{median(rows['cross-moderate'], 'p99_ms'):.1f} ms | {median(rows['cross-moderate'], 'ack_p99_ms'):.1f} ms |",
            "",
            f"Cross-node / same-node throughput: **{cm / sm:.2f}**. 10 % load = {rate:.0f} messages/s per publisher "
            f"({rate * a.pairs:,.0f}/s in all).",
            "",
        ]
    rows = res.get("bus")
    if rows:
        lines += [
            f"**Pub/sub across nodes through the cluster bus** ({a.pairs} QoS 1 pairs, 64-byte payloads; copies "
            "only to the node with subscribers, by announced interest; node 1 on CPU 0, node 2 on CPU 1, tansu "
            "and the harness floating):",
            "",
            "| messages/s in all | subscribers on | delivered/s | lost | p50 | p99 | publishers' PUBACK p99 |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for key in rows:
            kind, rate = key.split("@")
            t = rows[key]
            where = "the publishers' node" if kind == "same" else "the other node"
            lines.append(
                f"| {float(rate) * a.pairs:,.0f} | {where} | {median(t, 'msgs_per_sec'):,.0f} | "
                f"{sum(r['lost'] for r in t)} | {median(t, 'p50_ms'):.1f} ms | {median(t, 'p99_ms'):.1f} ms | "
                f"{median(t, 'ack_p99_ms'):.1f} ms |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    main()
