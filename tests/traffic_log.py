"""With NNSIGHT_PERSONA_TRAFFIC_LOG=FILE set, the tests that measure remote traffic append one JSON
line per measurement: how docs/remote.md's traffic tables are made (scripts/traffic_tables.py
renders the committed logs in tests/traffic-logs/)."""

from __future__ import annotations

import json
import os


def record(**fields) -> None:
    path = os.environ.get("NNSIGHT_PERSONA_TRAFFIC_LOG")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
        with open(path, "a") as log:
            log.write(json.dumps({"test": test, **fields}) + "\n")
