"""Log output for machines: ``twistd mailgw --log-format json`` writes one
JSON object per line (time, level, namespace, the connection's trace id when
there is one, the message, and a traceback for failures)."""
from __future__ import annotations

import json
import sys
from datetime import datetime, UTC

from twisted.logger import FileLogObserver, formatEvent

#: the dotted name twistd's --logger option takes
JSON_OBSERVER = "mailgw.logs.json_observer"


def event_as_json(event) -> str:
    record = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), UTC)
                        .isoformat(timespec="milliseconds"),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    if "trace" in event:
        record["trace"] = event["trace"]
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False) + "\n"


def json_observer(out=None):
    """A log observer writing JSON lines to C{out} (standard output)."""
    return FileLogObserver(out or sys.stdout, event_as_json)
