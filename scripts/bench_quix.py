#!/usr/bin/env python3
"""The aggregation benchmark's Quix Streams 3 run (scripts/bench.py aggregate --kinds quix): the same orders, the same
tumbling 10 s window with count, sum and max of the amount per customer, on the same broker.

  bench_quix.py BROKERS GROUP STATE_DIR

One shim for tansu: its DescribeConfigs has no retention.ms, which Quix reads in TopicManager.derive_topic_config to
size changelog topics. With use_changelog_topics=False no changelog is made; replacing that one function lets Quix
start, and its processing is unchanged.
"""
import sys
import warnings
from datetime import timedelta

warnings.filterwarnings("ignore")

from quixstreams import Application
from quixstreams.dataframe.windows import Count, Max, Sum
from quixstreams.models.topics import manager


def derive_topic_config(cls, topics):
    topics = list(topics)
    return manager.TopicConfig(num_partitions=max(t.broker_config.num_partitions or 1 for t in topics),
                               replication_factor=1)


manager.TopicManager.derive_topic_config = classmethod(derive_topic_config)


def event_time(value, headers, timestamp, timestamp_type):
    return int(value["ts"] * 1000)


def main():
    brokers, group, state = sys.argv[1:4]
    app = Application(broker_address=brokers, consumer_group=group, auto_offset_reset="earliest",
                      use_changelog_topics=False, state_dir=state, loglevel="WARNING")
    src = app.topic("src", value_deserializer="json", timestamp_extractor=event_time)
    dst = app.topic("dst", value_serializer="json")
    sdf = app.dataframe(src)
    sdf = sdf.tumbling_window(timedelta(seconds=10), grace_ms=5000).agg(
        n=Count(), total=Sum("amount"), hi=Max("amount")).final()
    sdf.to_topic(dst)
    app.run()


if __name__ == "__main__":
    main()
