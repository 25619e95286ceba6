#!/usr/bin/env python3
"""The SQL benchmark: `supervisor` scanning a table into another (SOURCE(VALUE) -> sqrt -> DESTINATION(VALUE, ROOT)),
against the two anchors, run back to back on the same throwaway server:

  database alone   INSERT INTO destination SELECT value, sqrt(value) FROM source   (the physical limit)
  article          ../shared/bench/py_seed_sql.py: 2 paged readers, 3 writer threads inserting row by row (PostgreSQL)

For each engine (postgres, mariadb, sqlite) and row count it prints one JSON line per run: rows/s, and for supervisor
the peak RSS of its largest process (polled from /proc), then the ratios. Servers run with their default settings.
Not a test; run it through scripts/bench-sql.
"""
import argparse, json, os, shutil, signal, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPERVISOR = os.path.join(ROOT, "target", "release", "supervisor")
ARTICLE = os.path.join(ROOT, "..", "shared", "bench", "py_seed_sql.py")
AS_ROOT = os.geteuid() == 0


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port):
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


class Postgres:
    name = "postgres"

    def __init__(self, work, wal_level="replica"):
        self.wal_level = wal_level
        bins = sorted(d for d in os.listdir("/usr/lib/postgresql"))
        self.bin = f"/usr/lib/postgresql/{bins[-1]}/bin"
        self.dir, self.port = os.path.join(work, "pg"), free_port()
        os.makedirs(self.dir)
        if AS_ROOT:
            shutil.chown(self.dir, "postgres", "postgres")
        self.run("initdb", "-D", f"{self.dir}/data", "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C")
        self.ctl("start")
        self.psql("CREATE DATABASE bench", db="postgres")

    def run(self, prog, *args):
        cmd = [f"{self.bin}/{prog}", *args]
        if AS_ROOT:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    def ctl(self, action):
        self.run("pg_ctl", "-D", f"{self.dir}/data", "-w", "-l", f"{self.dir}/log", "-o",
                 f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c wal_level={self.wal_level}", action)

    def psql(self, sql, db="bench"):
        subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db,
                        "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, stdout=subprocess.DEVNULL)

    def value(self, sql, db="bench"):
        return subprocess.run(["psql", "-qAt", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db,
                               "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, capture_output=True,
                              text=True).stdout.strip()

    def url(self, table):
        return f"postgres://postgres@127.0.0.1:{self.port}/bench?table={table}"

    def dsn(self):
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=bench"

    def setup(self, n):
        self.psql("DROP TABLE IF EXISTS source, destination, destination_dead_letter")
        self.psql("CREATE TABLE source (value BIGINT PRIMARY KEY); "
                  "CREATE TABLE destination (value BIGINT PRIMARY KEY, root DOUBLE PRECISION)")
        self.psql(f"INSERT INTO source SELECT generate_series(1, {n})")
        self.psql("VACUUM ANALYZE source")

    def alone(self):
        self.psql("INSERT INTO destination SELECT value, sqrt(value) FROM source")

    def empty(self):
        self.psql("TRUNCATE destination")
        self.psql("CHECKPOINT")

    def stop(self):
        self.ctl("stop")


class Mariadb:
    name = "mariadb"

    def __init__(self, work):
        self.dir, self.port = os.path.join(work, "maria"), free_port()
        user = ["--user=root"] if AS_ROOT else []
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.dir}/data",
                        "--auth-root-authentication-method=normal", "--skip-test-db", *user],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc = subprocess.Popen(["mariadbd", "--no-defaults", f"--datadir={self.dir}/data",
                                      f"--socket={self.dir}/sock", f"--port={self.port}", "--bind-address=127.0.0.1",
                                      "--skip-name-resolve", "--skip-log-bin", f"--log-error={self.dir}/err", *user],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.sql("CREATE DATABASE bench; CREATE USER 'bench'@'%'; GRANT ALL ON *.* TO 'bench'@'%'", db=None)

    def sql(self, sql, db="bench"):
        cmd = ["mariadb", "--no-defaults", f"--socket={self.dir}/sock", "-u", "root"] + ([db] if db else [])
        subprocess.run(cmd + ["-e", sql], check=True, stdout=subprocess.DEVNULL)

    def url(self, table):
        return f"mysql://bench@127.0.0.1:{self.port}/bench?table={table}"

    def setup(self, n):
        self.sql("DROP TABLE IF EXISTS source, destination, destination_dead_letter")
        self.sql("CREATE TABLE source (value BIGINT PRIMARY KEY); "
                 "CREATE TABLE destination (value BIGINT PRIMARY KEY, root DOUBLE)")
        self.sql(f"INSERT INTO source SELECT seq FROM seq_1_to_{n}")

    def alone(self):
        self.sql("INSERT INTO destination SELECT value, SQRT(value) FROM source")

    def empty(self):
        self.sql("TRUNCATE destination")

    def stop(self):
        self.proc.terminate(); self.proc.wait()


class Sqlite:
    name = "sqlite"

    def __init__(self, work):
        self.path = os.path.join(work, "bench.sqlite")

    def sql(self, sql):
        import sqlite3
        c = sqlite3.connect(self.path)
        try:
            c.execute("SELECT sqrt(4)")
        except sqlite3.OperationalError:  # a system SQLite built without its math functions
            import math
            c.create_function("sqrt", 1, math.sqrt, deterministic=True)
        c.executescript(sql); c.commit(); c.close()

    def url(self, table):
        return f"sqlite:{self.path}?table={table}"

    def setup(self, n):
        self.sql("PRAGMA journal_mode=WAL; DROP TABLE IF EXISTS source; DROP TABLE IF EXISTS destination; "
                 "CREATE TABLE source (value INTEGER PRIMARY KEY); "
                 "CREATE TABLE destination (value INTEGER PRIMARY KEY, root REAL); "
                 f"WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < {n}) "
                 "INSERT INTO source SELECT v FROM s")

    def alone(self):
        self.sql("INSERT INTO destination SELECT value, sqrt(value) FROM source")

    def empty(self):
        self.sql("DELETE FROM destination")

    def stop(self):
        pass


def tree(root):
    """The pids of root and all its descendants."""
    children = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(p))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop(); out.append(p); todo.extend(children.get(p, []))
    return out


def peak_rss(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_supervisor(db, n, readers, work):
    state = tempfile.mkdtemp(dir=work)
    cmd = [SUPERVISOR, "--source", db.url("source"), "--sink", db.url("destination"), "--jq", ".root = (.value | sqrt)",
           "--readers", str(readers), "--state-dir", state, "--status-interval", "3600"]
    t0 = time.time()
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    peaks = {}
    while p.poll() is None:
        for pid in tree(p.pid):
            peaks[pid] = max(peaks.get(pid, 0), peak_rss(pid))
        time.sleep(0.05)
    secs = time.time() - t0
    log = p.stderr.read()
    if p.returncode != 0:
        sys.exit(f"supervisor exited {p.returncode}:\n{log}")
    return {"label": "supervisor", "engine": db.name, "rows": n, "seconds": round(secs, 2), "rows_per_s": round(n / secs),
            "largest_process_mib": round(max(peaks.values()) / 2**20, 1)}


def timed(label, db, n, f):
    t0 = time.time(); f(); secs = time.time() - t0
    return {"label": label, "engine": db.name, "rows": n, "seconds": round(secs, 2), "rows_per_s": round(n / secs)}


# --follow: 1M changes (inserts and updates in transactions of 100) read from a slot by pg_recvlogical with wal2json
# to /dev/null, then followed by supervisor into another table; and the lag under a steady 5k changes/s.
FOLLOW_TABLES = """
DROP TABLE IF EXISTS src, dst, dst_dead_letter;
CREATE TABLE src (id BIGINT PRIMARY KEY, v BIGINT NOT NULL, written_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp());
CREATE TABLE dst (id BIGINT PRIMARY KEY, v BIGINT, written_at TIMESTAMPTZ, arrived TIMESTAMPTZ DEFAULT clock_timestamp());
INSERT INTO src (id, v) SELECT g, 0 FROM generate_series(1, 1000) g;
CREATE OR REPLACE PROCEDURE changes(first BIGINT, n BIGINT, per_second INT) LANGUAGE plpgsql AS $$
DECLARE t0 TIMESTAMPTZ := clock_timestamp(); i BIGINT := 0;
BEGIN
  WHILE i < n LOOP
    -- Half new rows, half updates of rows written before.
    INSERT INTO src (id, v) SELECT first + i + g, g FROM generate_series(0, 49) g;
    UPDATE src SET v = v + 1 WHERE id BETWEEN greatest(1, first + i - 200) AND greatest(1, first + i - 200) + 49;
    COMMIT;
    i := i + 100;
    IF per_second > 0 THEN
      PERFORM pg_sleep(greatest(0, extract(epoch FROM t0 + make_interval(secs => i::float8 / per_second)
                                                    - clock_timestamp())));
    END IF;
  END LOOP;
END $$;
"""


def follow(n, readers, work):
    # A cluster of its own per run, in a directory the server (run as postgres) can reach.
    work = tempfile.mkdtemp(dir=work)
    os.chmod(work, 0o755)
    db = Postgres(work, wal_level="logical")
    try:
        db.psql(FOLLOW_TABLES)
        state = tempfile.mkdtemp(dir=work)
        cmd = [SUPERVISOR, "--source", db.url("src"), "--sink", db.url("dst"), "--follow", "--jq", ".",
               "--readers", str(readers), "--state-dir", state, "--status-interval", "3600"]
        lsn = lambda: db.value("SELECT pg_current_wal_lsn()")

        def start():
            return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)

        def caught_up(p, end):
            peaks = {}
            while db.value(f"SELECT confirmed_flush_lsn >= '{end}' FROM pg_replication_slots "
                           "WHERE slot_name LIKE 'supervisor_%' AND NOT temporary") != "t":
                if p.poll() is not None:
                    sys.exit(f"supervisor exited {p.returncode}:\n{p.stderr.read()}")
                for pid in tree(p.pid):
                    peaks[pid] = max(peaks.get(pid, 0), peak_rss(pid))
                time.sleep(0.05)
            return max(peaks.values() or [0])

        def stop(p):
            p.send_signal(signal.SIGTERM)
            log = p.stderr.read()
            if p.wait() != 0:
                sys.exit(f"supervisor exited {p.returncode}:\n{log}")

        # The slot is made and the snapshot (1000 rows) taken; then it is stopped while the changes are written.
        p = start()
        caught_up(p, lsn())
        stop(p)
        db.run("pg_recvlogical", "-h", "127.0.0.1", "-p", str(db.port), "-U", "postgres", "-d", "bench",
               "--slot", "bench_recv", "--create-slot", "-P", "wal2json")
        db.psql(f"CALL changes(1000000, {n}, 0)")
        end = lsn()
        t0 = time.time()
        db.run("pg_recvlogical", "-h", "127.0.0.1", "-p", str(db.port), "-U", "postgres", "-d", "bench",
               "--slot", "bench_recv", "--start", "--endpos", end, "-f", "/dev/null", "-o", "format-version=2",
               "-o", "include-lsn=1", "-o", "include-timestamp=1", "-o", "add-tables=public.src")
        recv = time.time() - t0
        db.psql("SELECT pg_drop_replication_slot('bench_recv')")
        t0 = time.time()
        p = start()
        peak = caught_up(p, end)
        ours = time.time() - t0
        stop(p)
        differ = db.value("SELECT count(*) FROM (SELECT id, v, written_at FROM src EXCEPT "
                          "SELECT id, v, written_at FROM dst) d")
        runs = [{"label": "pg_recvlogical", "changes": n, "seconds": round(recv, 2), "changes_per_s": round(n / recv)},
                {"label": "supervisor --follow", "changes": n, "seconds": round(ours, 2),
                 "changes_per_s": round(n / ours), "largest_process_mib": round(peak / 2**20, 1),
                 "rows_differing": int(differ)}]
        # Lag: 5k changes/s for 20 s while it follows; each new row's arrival in dst against its commit in src.
        p = start()
        caught_up(p, lsn())
        db.psql("TRUNCATE dst")
        db.psql("CALL changes(5000000, 100000, 5000)")
        caught_up(p, lsn())
        stop(p)
        lag = db.value("SELECT round(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM arrived - "
                       "written_at))::numeric, 3) || ' ' || round(percentile_cont(0.5) WITHIN GROUP (ORDER BY "
                       "extract(epoch FROM arrived - written_at))::numeric, 3) FROM dst WHERE id >= 5000000")
        p99, p50 = lag.split()
        runs.append({"label": "lag at 5k changes/s", "changes": 100000, "p99_s": float(p99), "p50_s": float(p50)})
        for r in runs:
            print(json.dumps(r), flush=True)
        print(json.dumps({"changes": n, "follow_vs_pg_recvlogical": round(runs[1]["changes_per_s"] /
                                                                          runs[0]["changes_per_s"], 2),
                          "lag_p99_s": float(p99)}), flush=True)
    finally:
        db.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default="postgres,mariadb,sqlite")
    ap.add_argument("--rows", default="1000000", help="row counts, comma separated")
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--article", action="store_true", help="also run the article's design (PostgreSQL; slow)")
    ap.add_argument("--python", default=sys.executable, help="a Python with psycopg2, for --article")
    ap.add_argument("--follow", action="store_true",
                    help="--follow against pg_recvlogical (1M changes, or --rows), and its lag at 5k changes/s")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="supervisor-bench-sql-")
    os.chmod(work, 0o755)
    if args.follow:
        for n in map(int, args.rows.split(",")):
            follow(n, args.readers, work)
        shutil.rmtree(work, ignore_errors=True)
        return
    results = []
    for name in args.engines.split(","):
        db = {"postgres": Postgres, "mariadb": Mariadb, "sqlite": Sqlite}[name](work)
        try:
            for n in map(int, args.rows.split(",")):
                db.setup(n)
                runs = [timed("database-alone", db, n, db.alone)]
                db.empty()
                runs.append(run_supervisor(db, n, args.readers, work))
                if args.article and name == "postgres":
                    db.empty()
                    out = subprocess.run([args.python, ARTICLE, db.dsn(), str(n), "2", "3"], check=True,
                                         capture_output=True, text=True).stdout
                    a = json.loads(out.strip().splitlines()[-1])
                    runs.append({"label": "article", "engine": name, "rows": n, "seconds": a["seconds"],
                                 "rows_per_s": a["rows_per_s"]})
                for r in runs:
                    print(json.dumps(r), flush=True)
                ours = runs[1]["rows_per_s"]
                ratios = {"engine": name, "rows": n, "vs_database_alone": round(ours / runs[0]["rows_per_s"], 3)}
                if len(runs) > 2:
                    ratios["vs_article"] = round(ours / runs[2]["rows_per_s"], 1)
                print(json.dumps(ratios), flush=True)
                results.append(ratios)
                db.empty()
        finally:
            db.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
