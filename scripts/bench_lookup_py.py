#!/usr/bin/env python3
"""The naive stream-table join the lookup benchmark compares with: one Kafka consumer that, for each event, runs one
SELECT for its customer's row on PostgreSQL, adds it and produces the event on; offsets committed after the produced
events are flushed. Usage: bench_lookup_py.py BROKERS GROUP DSN"""
import json, signal, sys
import psycopg2
from confluent_kafka import Consumer, Producer

brokers, group, dsn = sys.argv[1:4]
db = psycopg2.connect(dsn)
db.autocommit = True
cur = db.cursor()
c = Consumer({"bootstrap.servers": brokers, "group.id": group, "auto.offset.reset": "earliest",
              "enable.auto.commit": False, "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
p = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
c.subscribe(["src"])
running = True
signal.signal(signal.SIGINT, lambda *_: globals().update(running=False))
since = 0
while running:
    for m in c.consume(500, 0.1):
        if m.error():
            continue
        event = json.loads(m.value())
        cur.execute("SELECT id, name, tier FROM customers WHERE id = %s", (event["customer"],))
        row = cur.fetchone()
        event["c"] = None if row is None else {"id": row[0], "name": row[1], "tier": row[2]}
        while True:
            try:
                p.produce("dst", key=m.key(), value=json.dumps(event).encode()); break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
        since += 1
    if since >= 1000:
        p.flush(30); c.commit(asynchronous=False); since = 0
p.flush(30)
try:
    c.commit(asynchronous=False)
except Exception as e:  # nothing consumed since the last commit
    print(f"final commit: {e}", file=sys.stderr)
c.close()
