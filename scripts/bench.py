#!/usr/bin/env python3
"""The project benchmark: `supervisor` against a single-process run of the same transform (examples/single.rs), on a
tansu broker started here on a loopback port. Not a test: it times things and prints a table.

  throughput  N events already in the source; events/s, CPU per event, peak RSS per process, shutdown time
  latency     events written at a steady rate; end-to-end latency percentiles (source write -> destination read)
  aggregate   N orders of 10k customers over 100 s of event time, already in the source; the md5 pipeline against
              --aggregate (tumbling=10s; count, sum, max) and, with --kinds quix, Quix Streams 3 doing the same;
              events/s and CPU per event until the group's commits reach the end
  tee         N events already in the source; md5 into one topic, against md5 into two (--sink a=kafka:dst --sink
              b=kafka:dst2); events/s and CPU per event until the group's commits reach the end
  lookup      N orders naming customers uniformly at random from a 100k-row PostgreSQL table (a throwaway server
              started here); the md5 pipeline, against --jq joining each order with lookup("customers"; .customer),
              and against a Python consumer running one SELECT per event (scripts/bench_lookup_py.py)

Run it through scripts/bench, which builds the binaries and a Python environment first.
"""
import argparse, json, os, random, resource, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST = ["Bonita", "Alejandra", "Marcus", "Yuki", "Oluwaseun", "Ines", "Dmitri", "Priya", "Chen", "Fatima"]
LAST = ["Kautzer", "Gutierrez", "Nakamura", "Okafor", "Lindqvist", "Petrov", "Sharma", "Wang", "Haddad", "Muller"]
CLIENT = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}


def tansu_bin():
    for c in (os.environ.get("TANSU_BIN"), shutil.which("tansu"), os.path.expanduser("~/.cargo/bin/tansu")):
        if c and os.path.exists(c):
            return c
    sys.exit("no tansu: run scripts/install-tansu or set TANSU_BIN")


def start_broker():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    url = f"tcp://127.0.0.1:{port}"
    log = open(os.path.join(tempfile.gettempdir(), "supervisor-bench-tansu.log"), "w")
    p = subprocess.Popen([tansu_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                          "--storage-engine", "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); break
        except OSError:
            time.sleep(0.05)
    brokers = f"127.0.0.1:{port}"
    admin = AdminClient({"bootstrap.servers": brokers})
    for f in admin.create_topics([NewTopic(t, num_partitions=4, replication_factor=1) for t in ("src", "dst")]).values():
        f.result()
    return p, brokers


def event(i, pad, sent=None):
    d = {"first_name": FIRST[i % 10], "last_name": LAST[(i // 10) % 10], "seq": i}
    if sent is not None:
        d["sent"] = sent
    if pad:
        d["note"] = "x" * pad
    return json.dumps(d).encode()


def load(brokers, n, pad):
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 1000000})
    for i in range(n):
        while True:
            try:
                p.produce("src", key=str(i % 1024).encode(), value=event(i, pad)); break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(120) == 0


def tree(root):
    """pid -> comm of root and all its descendants."""
    kids, names = {}, {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            kids.setdefault(int(rest[1]), []).append(int(d)); names[int(d)] = comm
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        out[pid] = names.get(pid, "?")
        todo.extend(kids.get(pid, []))
    return out


def rss_kib(pid, field="VmRSS"):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Memory(threading.Thread):
    """Samples the RSS of every process in the tree; keeps each one's peak and the tree's peak sum."""
    def __init__(self, root):
        super().__init__(daemon=True); self.root, self.peak, self.tree_peak, self.stop = root, {}, 0, False

    def run(self):
        while not self.stop:
            procs = tree(self.root); total = 0
            for pid, name in procs.items():
                kib = max(rss_kib(pid), rss_kib(pid, "VmHWM"))
                total += rss_kib(pid)
                key = f"{name}[{pid}]"
                self.peak[key] = max(self.peak.get(key, 0), kib)
            self.tree_peak = max(self.tree_peak, total)
            time.sleep(0.05)


class Counter(threading.Thread):
    """Reads the destination from the start; counts events and, for latency runs, measures send->read time."""
    def __init__(self, brokers):
        super().__init__(daemon=True)
        self.c = Consumer({"bootstrap.servers": brokers, "group.id": "bench-count", "enable.auto.commit": False,
                           "fetch.wait.max.ms": 5, "log_level": 0})
        self.c.assign([TopicPartition("dst", p, 0) for p in range(4)])
        self.n, self.latencies, self.first_at, self.stop = 0, [], None, False

    def run(self):
        while not self.stop:
            for m in self.c.consume(10000, 0.05):
                if m.error():
                    continue
                now = time.time()
                self.n += 1
                if self.first_at is None:
                    self.first_at = (now, self.n)
                if b'"sent"' in m.value():
                    self.latencies.append(now - json.loads(m.value())["sent"])


EXTRA = []
FLAGS = []


def command(kind, brokers, hashers, group=None):
    binary = {"supervisor": os.environ.get("SUPERVISOR_BIN", os.path.join(ROOT, "target/release/supervisor")),
              "single": os.environ.get("SINGLE_BIN", os.path.join(ROOT, "target/release/examples/single"))}[kind]
    cmd = [binary, "--brokers", brokers, "--source-topic", "src", "--dest-topic", "dst",
           "--group-id", group or f"bench-{kind}", "--hashers", str(hashers)]
    for k, v in CLIENT.items():
        cmd += ["-X", f"{k}={v}"]
    for x in EXTRA:
        cmd += ["-X", x]
    if kind == "supervisor":
        cmd += FLAGS
    return cmd


def stop(proc):
    t = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL); rc = f"killed({proc.wait()})"
    return round(time.time() - t, 2), rc


def throughput(kind, n, hashers, pad, stop_at=1.0):
    broker, brokers = start_broker()
    try:
        load(brokers, n, pad)
        counter = Counter(brokers); counter.start()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.Popen(command(kind, brokers, hashers), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        mem = Memory(proc.pid); mem.start()
        t0 = time.time()
        while counter.n < n * stop_at and time.time() - t0 < 600 and proc.poll() is None:
            time.sleep(0.02)
        t_n, reached = time.time(), counter.n
        mem.stop = True; mem.join()
        shutdown, rc = stop(proc)
        counter.stop = True; counter.join()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime
        t_first, n_first = counter.first_at or (t_n, reached)
        return {"mode": "throughput", "kind": kind, "hashers": hashers, "n": n, "pad": pad, "reached": reached,
                "stopped_at": stop_at,
                "rate_eps": round((reached - n_first) / (t_n - t_first)) if t_n > t_first else None,
                "cpu_us_per_event": round(cpu * 1e6 / max(reached, 1), 2),
                "peak_rss_mib": {k: round(v / 1024, 1) for k, v in sorted(mem.peak.items())},
                "largest_mib": round(max(mem.peak.values(), default=0) / 1024, 1),
                "tree_mib": round(mem.tree_peak / 1024, 1), "shutdown_s": shutdown, "exit": rc}
    finally:
        os.killpg(broker.pid, signal.SIGTERM); broker.wait()


def latency(kind, rate, seconds, hashers, pad):
    broker, brokers = start_broker()
    try:
        counter = Counter(brokers); counter.start()
        proc = subprocess.Popen(command(kind, brokers, hashers), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        p = Producer({"bootstrap.servers": brokers, "linger.ms": 2})
        t0 = time.time()
        while counter.n == 0 and time.time() - t0 < 60:  # until the group has formed and one event made it
            p.produce("src", key=b"warm", value=event(0, pad)); p.flush(5); time.sleep(0.2)
        warm = counter.n
        start, i = time.time(), 0
        while time.time() - start < seconds:
            wait = start + i / rate - time.time()
            if wait > 0:
                time.sleep(wait)
            p.produce("src", key=str(i % 1024).encode(), value=event(i, pad, sent=time.time())); p.poll(0)
            i += 1
        p.flush(30)
        while counter.n < warm + i and time.time() - start < seconds + 30:
            time.sleep(0.05)
        shutdown, rc = stop(proc)
        counter.stop = True; counter.join()
        ms = sorted(x * 1000 for x in counter.latencies)
        q = lambda f: round(ms[min(len(ms) - 1, int(f * len(ms)))], 2) if ms else None
        return {"mode": "latency", "kind": kind, "hashers": hashers, "rate": rate, "events": i, "read": len(ms),
                "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": round(ms[-1], 2) if ms else None, "exit": rc}
    finally:
        os.killpg(broker.pid, signal.SIGTERM); broker.wait()


AGGREGATE = ["--aggregate", "{n: count, total: sum(.amount), hi: max(.amount)}", "--group-by", ".customer",
             "--event-time", ".ts", "--window", "tumbling=10s"]
KEYS = [10_000]


def load_orders(brokers, n):
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 1000000})
    rnd = random.Random(1)
    for i in range(n):
        c = f"c{rnd.randrange(KEYS[0])}"
        v = json.dumps({"customer": c, "amount": rnd.randrange(100000) / 100, "ts": 1796288400 + i * 100 / n})
        while True:
            try:
                p.produce("src", key=c.encode(), value=v.encode()); break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(120) == 0


def committed(c, group):
    try:
        parts = c.committed([TopicPartition("src", p) for p in range(4)], timeout=5)
    except Exception:
        return 0
    return sum(max(tp.offset, 0) for tp in parts)


def aggregate(kind, n, hashers, state):
    """Events/s and CPU per event of one kind, from a backlog of n orders, until its group committed them all."""
    broker, brokers = start_broker()
    try:
        load_orders(brokers, n)
        group = f"bench-{kind}"
        if kind == "quix":
            cmd = [sys.executable, os.path.join(ROOT, "scripts", "bench_quix.py"), brokers, group, state]
        else:
            cmd = command("supervisor", brokers, hashers, group)
            if kind == "aggregate":
                cmd += AGGREGATE + ["--state-dir", state]
        return until_committed("aggregate", kind, cmd, brokers, group, n, hashers)
    finally:
        os.killpg(broker.pid, signal.SIGTERM); broker.wait()


def until_committed(mode, kind, cmd, brokers, group, n, hashers):
    """Runs cmd until its group committed n events; its rate (from 5% on), CPU per event and memory."""
    watch = Consumer({"bootstrap.servers": brokers, "group.id": group, "log_level": 0})
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = open(os.environ["BENCH_LOG"], "w") if os.environ.get("BENCH_LOG") else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=log)
    mem = Memory(proc.pid); mem.start()
    t0, t5, done = time.time(), None, 0
    while done < n and time.time() - t0 < 900 and proc.poll() is None:
        time.sleep(0.2)
        done = committed(watch, group)
        if t5 is None and done >= n * 0.05:
            t5, n5 = time.time(), done
    t_n = time.time()
    mem.stop = True; mem.join()
    shutdown, rc = stop(proc)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime
    watch.close()
    return {"mode": mode, "kind": kind, "hashers": hashers, "n": n, "keys": KEYS[0], "committed": done,
            "rate_eps": round((done - n5) / (t_n - t5)) if t5 and t_n > t5 else None,
            "cpu_us_per_event": round(cpu * 1e6 / max(done, 1), 2),
            "largest_mib": round(max(mem.peak.values(), default=0) / 1024, 1),
            "tree_mib": round(mem.tree_peak / 1024, 1), "shutdown_s": shutdown, "exit": rc}


def tee(kind, n, hashers):
    """md5 into one topic ("one") or the same into two topics ("tee"), until the group committed every event."""
    broker, brokers = start_broker()
    try:
        admin = AdminClient({"bootstrap.servers": brokers})
        admin.create_topics([NewTopic("dst2", num_partitions=4, replication_factor=1)])["dst2"].result()
        load(brokers, n, 0)
        group = f"bench-{kind}"
        cmd = command("supervisor", brokers, hashers, group)
        if kind == "tee":
            i = cmd.index("--dest-topic"); del cmd[i:i + 2]
            cmd += ["--sink", "a=kafka:dst", "--sink", "b=kafka:dst2"]
        return until_committed("tee", kind, cmd, brokers, group, n, hashers)
    finally:
        os.killpg(broker.pid, signal.SIGTERM); broker.wait()


JOIN = '.c = lookup("customers"; .customer)'
CUSTOMERS = 100_000


def load_customer_orders(brokers, n):
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 1000000})
    rnd = random.Random(2)
    for i in range(n):
        c = rnd.randrange(1, CUSTOMERS + 1)
        v = json.dumps({"id": i, "customer": c, "amount": rnd.randrange(100000) / 100})
        while True:
            try:
                p.produce("src", key=str(c).encode(), value=v.encode()); break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(120) == 0


def lookup(kind, n, hashers, pg):
    """md5 ("md5"), the lookup join ("lookup") or Python's SELECT per event ("python"), until all is committed."""
    broker, brokers = start_broker()
    try:
        load_customer_orders(brokers, n)
        group = f"bench-{kind}"
        if kind == "python":
            cmd = [sys.executable, os.path.join(ROOT, "scripts", "bench_lookup_py.py"), brokers, group, pg.dsn()]
        else:
            cmd = command("supervisor", brokers, hashers, group)
            if kind == "lookup":
                cmd += ["--jq", JOIN, "--lookup", "customers=" + pg.url("customers")]
            if kind == "jq":  # the same output without the lookup: what the jq filter alone costs
                cmd += ["--jq", '.c = {id: .customer, name: "customer-\\(.customer)", tier: "std"}']
        return until_committed("lookup", kind, cmd, brokers, group, n, hashers)
    finally:
        os.killpg(broker.pid, signal.SIGTERM); broker.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["throughput", "latency", "all", "aggregate", "tee", "lookup"])
    ap.add_argument("--n", type=int, default=1_000_000, help="events for throughput runs")
    ap.add_argument("--rate", type=int, default=5000, help="events/s for latency runs")
    ap.add_argument("--seconds", type=float, default=20, help="length of latency runs")
    ap.add_argument("--hashers", type=int, default=4)
    ap.add_argument("--pad", type=int, default=0, help="extra bytes per event")
    ap.add_argument("--runs", type=int, default=1, help="runs of each command, back to back")
    ap.add_argument("--stop-at", type=float, default=1.0,
                    help="stop throughput runs once this fraction of the events arrived (below 1: a full pipeline)")
    ap.add_argument("--kinds", default="supervisor,single")
    ap.add_argument("--keys", type=int, default=10_000, help="customers (group keys) in aggregate runs")
    ap.add_argument("-X", action="append", default=[], help="librdkafka property for both commands")
    ap.add_argument("--flags", default="", help="more flags for supervisor, as one string (split on spaces)")
    a = ap.parse_args()
    EXTRA.extend(a.X)
    FLAGS.extend(a.flags.split())
    KEYS[0] = a.keys
    rows = []
    if a.mode in ("tee", "lookup"):
        base, other = ("one", "tee") if a.mode == "tee" else ("md5", "lookup")
        kinds = a.kinds if a.kinds != "supervisor,single" else f"{base},{other}"
        pg = None
        if a.mode == "lookup":
            KEYS[0] = CUSTOMERS
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from bench_sql import Postgres
            work = tempfile.mkdtemp(prefix="bench-lookup-")
            os.chmod(work, 0o755)  # the server runs as postgres when this runs as root
            pg = Postgres(work)
            pg.psql("CREATE TABLE customers (id BIGINT PRIMARY KEY, name TEXT NOT NULL, tier TEXT NOT NULL)")
            pg.psql(f"INSERT INTO customers SELECT v, 'customer-' || v, CASE WHEN v % 4 = 0 THEN 'gold' ELSE 'std' END "
                    f"FROM generate_series(1, {CUSTOMERS}) v")
            pg.psql("VACUUM ANALYZE customers")
        try:
            for _ in range(a.runs):
                for kind in kinds.split(","):
                    row = tee(kind, a.n, a.hashers) if a.mode == "tee" else lookup(kind, a.n, a.hashers, pg)
                    rows.append(row); print(json.dumps(row), flush=True)
        finally:
            if pg:
                pg.stop()
        by = {r["kind"]: r for r in rows}
        for k in by:
            if k != base and base in by:
                print(json.dumps({f"{k}_vs_{base}_rate": round(by[k]["rate_eps"] / by[base]["rate_eps"], 2),
                                  f"{k}_vs_{base}_cpu": round(by[k]["cpu_us_per_event"] / by[base]["cpu_us_per_event"], 2)}))
        if "lookup" in by and "python" in by:
            print(json.dumps({"lookup_vs_python_rate": round(by["lookup"]["rate_eps"] / by["python"]["rate_eps"], 1)}))
        return
    if a.mode == "aggregate":
        kinds = a.kinds if a.kinds != "supervisor,single" else "md5,aggregate"
        for _ in range(a.runs):
            for kind in kinds.split(","):
                state = tempfile.mkdtemp(prefix=f"bench-{kind}-")
                rows.append(aggregate(kind, a.n, a.hashers, state)); print(json.dumps(rows[-1]), flush=True)
                shutil.rmtree(state, ignore_errors=True)
        by = {r["kind"]: r for r in rows}
        if "md5" in by and "aggregate" in by:
            md5, agg = by["md5"], by["aggregate"]
            print(json.dumps({"aggregate_vs_md5_rate": round(agg["rate_eps"] / md5["rate_eps"], 2),
                              "aggregate_vs_md5_cpu": round(agg["cpu_us_per_event"] / md5["cpu_us_per_event"], 2)}))
        if "quix" in by and "aggregate" in by:
            q, agg = by["quix"], by["aggregate"]
            print(json.dumps({"aggregate_vs_quix_rate": round(agg["rate_eps"] / q["rate_eps"], 2),
                              "aggregate_vs_quix_cpu": round(agg["cpu_us_per_event"] / q["cpu_us_per_event"], 3)}))
        return
    for _ in range(a.runs):
        for kind in a.kinds.split(","):
            if a.mode in ("throughput", "all"):
                rows.append(throughput(kind, a.n, a.hashers, a.pad, a.stop_at)); print(json.dumps(rows[-1]), flush=True)
            if a.mode in ("latency", "all"):
                rows.append(latency(kind, a.rate, a.seconds, a.hashers, a.pad)); print(json.dumps(rows[-1]), flush=True)
    print()
    print(f"{'mode':<11}{'command':<12}{'events/s':>10}{'CPU µs/ev':>11}{'largest MiB':>13}{'tree MiB':>10}"
          f"{'shutdown s':>12}{'p50 ms':>8}{'p99 ms':>8}{'exit':>6}")
    for r in rows:
        g = lambda k: "" if r.get(k) is None else str(r[k])
        print(f"{r['mode']:<11}{r['kind']:<12}{g('rate_eps'):>10}{g('cpu_us_per_event'):>11}{g('largest_mib'):>13}"
              f"{g('tree_mib'):>10}{g('shutdown_s'):>12}{g('p50_ms'):>8}{g('p99_ms'):>8}{g('exit'):>6}")


if __name__ == "__main__":
    main()
