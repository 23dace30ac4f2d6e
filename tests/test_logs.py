"""The gateway's log observers (L{mailgw.logs}): twistd's text lines and
JSON lines, written a few at a time, warnings and errors at once, nothing
lost when the reactor stops; and where C{twistd mailgw} sends them."""
from __future__ import annotations

import io
import json
import os
import sys
import threading
from pathlib import Path

from twisted.internet.task import Clock
from twisted.logger import Logger, LogPublisher, formatEventAsClassicLogText, formatTime
from twisted.logger import timeFormatRFC3339
from twisted.python import threadable
from twisted.python.failure import Failure
from twisted.scripts.twistd import ServerOptions
from twisted.trial import unittest

from mailgw import logs
from mailgw.admin.devsetup import write_config


class RunningClock(Clock):
    running = True


class Output(io.StringIO):
    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


class BufferedObserverTests(unittest.TestCase):
    def setUp(self):
        self.clock = RunningClock()
        self.out = Output()
        self.observer = logs.BufferedLogObserver(self.out, logs.classic_text, self.clock)
        self.log = Logger(observer=LogPublisher(self.observer), namespace="mailgw.test")
        self.patch(threadable, "isInIOThread", lambda: True)

    def test_lines_of_an_interval_in_one_write(self):
        for n in range(5):
            self.log.info("[trace] queued as {n}", n=n)
        self.assertEqual(self.out.getvalue(), "")
        self.clock.advance(logs.FLUSH_INTERVAL)
        lines = self.out.getvalue().splitlines()
        self.assertEqual([line.split("] ", 1)[1] for line in lines],
                         [f"[trace] queued as {n}" for n in range(5)])
        self.assertEqual(self.out.writes, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_warnings_and_errors_at_once_with_what_waited(self):
        self.log.info("first")
        self.log.warn("second")
        self.assertEqual([line.split("] ", 1)[1] for line in self.out.getvalue().splitlines()],
                         ["first", "second"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.log.error("third")
        self.assertTrue(self.out.getvalue().endswith("third\n"))

    def test_at_once_when_the_reactor_is_not_running_or_from_another_thread(self):
        self.clock.running = False
        self.log.info("stopped")
        self.assertTrue(self.out.getvalue().endswith("stopped\n"))
        self.clock.running = True
        self.patch(threadable, "isInIOThread", lambda: False)
        self.log.info("from a thread")
        self.assertTrue(self.out.getvalue().endswith("from a thread\n"))

    def test_a_large_backlog_is_written_at_once(self):
        self.log.info("{text}", text="x" * logs.FLUSH_SIZE)
        self.assertGreater(len(self.out.getvalue()), logs.FLUSH_SIZE)

    def test_flush_writes_what_waits(self):
        self.log.info("waiting")
        self.observer.flush()
        self.assertTrue(self.out.getvalue().endswith("waiting\n"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_same_text_as_twistd(self):
        """Each line is what twistd's own text observer writes."""
        events = []
        publisher = LogPublisher(self.observer, events.append)
        log = Logger(observer=publisher, namespace="mailgw.smtp.protocol")
        logs._time_of_second.cache_clear()
        for when in (1_700_000_000.25, 1_700_000_000.75, 1_700_000_001.5):
            log.info("[{trace}] queued as {token}", trace="abc", token="T0", log_time=when)
        log.info("{a!r} {b:>6} {c[0]} {{braces}}", a="x'y", b=42, c=["first"])
        log.info("two\nlines of {what}", what="text")
        log.info("no such field: {missing}")
        log.info("a call: {f()}", f=lambda: "called")
        log.info("a system of its own", log_system="custom")
        log.warn("{namespace}", namespace=None, log_namespace=None)
        log.failure("with a traceback", failure=Failure(ValueError("boom")))
        log.info("")
        self.observer.flush()
        expected = "".join(formatEventAsClassicLogText(
            e, formatTime=lambda t: formatTime(t, timeFormatRFC3339)) or "" for e in events)
        self.assertEqual(self.out.getvalue(), expected)

    def test_json_lines(self):
        out = io.StringIO()
        observer = logs.BufferedLogObserver(out, logs.event_as_json, self.clock)
        Logger(observer=LogPublisher(observer)).info("[{trace}] hello", trace="t1")
        self.clock.advance(logs.FLUSH_INTERVAL)
        record = json.loads(out.getvalue())
        self.assertEqual((record["message"], record["trace"]), ("[t1] hello", "t1"))

    def test_threads_do_not_interleave(self):
        self.patch(threadable, "isInIOThread", lambda: False)

        def many(n):
            for i in range(200):
                self.log.info("thread {n} line {i}", n=n, i=i)
        threads = [threading.Thread(target=many, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        lines = self.out.getvalue().splitlines()
        self.assertEqual(len(lines), 800)
        self.assertTrue(all(" line " in line and line.count("thread") == 1 for line in lines))


class TwistdOptionsTests(unittest.TestCase):
    """Which observer C{twistd mailgw} asks twistd for."""

    def setUp(self):
        self.config = os.path.join(self.mktemp(), "mailgw.toml")
        os.makedirs(os.path.dirname(self.config))
        write_config(Path(self.config))
        self.patch(logs, "_text_target", dict(logs._text_target))

    def parse(self, *twistd):
        options = ServerOptions()
        options.parseOptions([*twistd, "mailgw", "--config", self.config])
        return options

    def test_text_where_twistd_would_write(self):
        options = self.parse("-n", "--logfile", "some.log")
        self.assertIs(options["logger"], logs.text_observer)
        self.assertEqual(logs._text_target, {"logfile": "some.log", "nodaemon": True})

    def test_stdout_with_nodaemon(self):
        self.parse("-n")
        self.assertEqual(logs._text_target, {"logfile": None, "nodaemon": True})
        observer = logs.text_observer()
        self.assertIs(observer._out, sys.stdout)

    def test_logger_and_syslog_still_win(self):
        options = self.parse("-n", "--logger", "mailgw.logs.json_observer")
        self.assertIs(options["logger"], logs.json_observer)
        options = self.parse("--syslog")
        self.assertIsNone(options["logger"])

    def test_json_format(self):
        options = ServerOptions()
        options.parseOptions(["-n", "mailgw", "--config", self.config, "--log-format", "json"])
        self.assertIs(options["logger"], logs.json_observer)
