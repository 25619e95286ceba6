#!/usr/bin/env python3
"""An --exec transform: one JSON event per line in, one line out per event."""
import json
import sys

for line in sys.stdin:
    event = json.loads(line)
    if not event.get("last_name", "").startswith("K"):
        print("[]", flush=True)  # an empty array filters the event out
        continue
    event["initials"] = event["first_name"][:1] + event["last_name"][:1]
    print(json.dumps(event), flush=True)  # one object: the output event
