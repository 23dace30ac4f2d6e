"""The gateway's log output.

``twistd mailgw`` writes the classic text lines twistd writes (to C{--logfile},
else to standard output with C{--nodaemon}); ``--log-format json`` writes one
JSON object per line (time, level, namespace, the connection's trace id when
there is one, the message, and a traceback for failures).

Both go through L{BufferedLogObserver}: a line is formatted when it is logged,
and the lines of a short interval are written together. Writing each line at
once cost the reactor one C{write} call per line (per accepted message, per
connection), and each such call lets the store's writer thread take the
interpreter: under load that halved the gateway's rate (bench/RESULTS.md).
Warnings and errors are written at once, as is anything logged outside the
reactor's thread or while the reactor is not running; what is waiting is
written when the reactor stops.
"""
from __future__ import annotations

import functools
import json
import signal
import sys
import threading
from datetime import datetime, UTC

from twisted.logger import (
    ILogObserver, LogLevel, formatEvent, formatEventAsClassicLogText,
    formatTime, timeFormatRFC3339,
)
from twisted.python import logfile, threadable
from zope.interface import implementer

#: the dotted names twistd's --logger option takes
JSON_OBSERVER = "mailgw.logs.json_observer"
TEXT_OBSERVER = "mailgw.logs.text_observer"

#: seconds a line may wait to be written with the next ones
FLUSH_INTERVAL = 0.1
#: characters that are written at once, however recent
FLUSH_SIZE = 64 * 1024
#: levels written at once
_URGENT = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})

#: where L{text_observer} writes: twistd's own --logfile and --nodaemon,
#: noted by the command line (L{mailgw.tap.Options}); None: standard output
_text_target = {"logfile": None, "nodaemon": True}


@implementer(ILogObserver)
class BufferedLogObserver:
    """Formats each event as it comes and writes the lines of up to
    L{FLUSH_INTERVAL} seconds with one C{write}."""

    def __init__(self, out, format_event, clock, interval: float = FLUSH_INTERVAL):
        """
        @param out: a text file (C{write} and C{flush}).
        @param format_event: an event's text (ending in a newline), or C{None}.
        @param clock: the reactor (C{IReactorTime}, C{running}).
        """
        self._out = out
        self._format = format_event
        self._clock = clock
        self._interval = interval
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._size = 0
        self._timer = None

    def __call__(self, event) -> None:
        text = self._format(event)
        if not text:
            return
        with self._lock:
            self._pending.append(text)
            self._size += len(text)
            now = (event.get("log_level") in _URGENT or self._size >= FLUSH_SIZE
                   or not threadable.isInIOThread() or not self._clock.running)
            if not now:
                if self._timer is None:
                    self._timer = self._clock.callLater(self._interval, self.flush)
                return
        self.flush()

    def flush(self) -> None:
        """Write what is waiting."""
        with self._lock:
            timer, self._timer = self._timer, None
            if timer is not None and timer.active():
                timer.cancel()
            text, self._pending, self._size = "".join(self._pending), [], 0
            if text:
                self._out.write(text)
                self._out.flush()


def _buffered(out, format_event) -> BufferedLogObserver:
    from twisted.internet import reactor
    observer = BufferedLogObserver(out, format_event, reactor)
    reactor.addSystemEventTrigger("after", "shutdown", observer.flush)
    return observer


def _time_of(when) -> str:
    """twistd's time prefix (RFC 3339, local time zone), made once a second."""
    if when is None:
        return formatTime(when, timeFormatRFC3339)
    return _time_of_second(int(when))


@functools.lru_cache(maxsize=1)
def _time_of_second(second: int) -> str:
    return formatTime(second, timeFormatRFC3339)


def classic_text(event) -> str | None:
    """An event as twistd's text observer writes it.

    The gateway's own lines (a format of plain fields, no failure) are
    formatted with C{str.format_map}, in C; anything else, and any format
    that does not apply, through Twisted's formatter, which also reports
    what it could not format."""
    fmt = event.get("log_format")
    if (type(fmt) is str and "()" not in fmt and "log_failure" not in event
            and "log_flattened" not in event and "log_system" not in event):
        try:
            text = fmt.format_map(event)
        except Exception:
            text = ""
        if text:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
            line = f"{_time_of(event.get('log_time'))} [{system}] {text}"
            return line.replace("\n", "\n\t") + "\n"
    return formatEventAsClassicLogText(event, formatTime=_time_of)


def use_text_observer(logfile_name: str | None, nodaemon: bool) -> None:
    """Note where L{text_observer} writes: twistd's C{--logfile} and
    C{--nodaemon}, as twistd's own text observer would use them."""
    _text_target.update(logfile=logfile_name, nodaemon=nodaemon)


def text_observer():
    """twistd's text lines, to the same place twistd would write them, buffered."""
    name, nodaemon = _text_target["logfile"], _text_target["nodaemon"]
    if name == "-" or (nodaemon and not name):
        if not nodaemon:
            sys.exit("Daemons cannot log to stdout, exiting!")
        return _buffered(sys.stdout, classic_text)
    out = logfile.LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):
        # as twistd does: SIGUSR1 rotates the file
        def rotate(signum, frame):
            from twisted.internet import reactor
            reactor.callFromThread(out.rotate)
        signal.signal(signal.SIGUSR1, rotate)
    return _buffered(out, classic_text)


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
    """A log observer writing JSON lines to C{out} (standard output), buffered."""
    return _buffered(out or sys.stdout, event_as_json)
