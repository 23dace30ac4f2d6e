"""twistd's side of C{[server] workers} (L{mailgw.workers.pool}) over a
fake process reactor and a L{Clock}: what a worker is started with, its
log lines, and its restart, back-off and stop."""
from __future__ import annotations

import json
import socket

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailgw.config import parse_config
from mailgw.workers import pool
from mailgw.workers.channel import Handshake


class FakeProcess:
    """What C{spawnProcess} returns: the writes and signals it was given."""

    def __init__(self, pid, protocol):
        self.pid = pid
        self.protocol = protocol
        self.written = []
        self.signals = []

    def writeToChild(self, fd, data):
        self.written.append((fd, data))

    def signalProcess(self, name):
        if self.protocol.ended:
            raise error.ProcessExitedAlready()
        self.signals.append(name)

    def end(self, code=None, signal_number=None):
        self.protocol.ended = True
        reason = (error.ProcessDone(0) if not code and not signal_number
                  else error.ProcessTerminated(code, signal_number))
        self.protocol.processEnded(Failure(reason))


class ProcessReactor(Clock):
    """A L{Clock} that records spawned processes."""

    def __init__(self):
        super().__init__()
        self.spawned = []
        self.executables = []
        #: exceptions the next spawns raise
        self.failures = []

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None):
        if self.failures:
            raise self.failures.pop(0)
        self.executables.append(executable)
        protocol.ended = False
        process = FakeProcess(1000 + len(self.spawned), protocol)
        self.spawned.append((process, args, childFDs))
        return process


class BoundListener:
    """A shared listener as the pool sees it."""

    def __init__(self, fd, family):
        self.fd, self.family = fd, family

    def inheritable(self):
        return self.fd, self.family


class PoolTests(unittest.TestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.reactor = ProcessReactor()
        self.config = parse_config({"server": {"workers": 3}, "shutdown_grace": 5})
        self.enqueued = []
        self.pool = pool.WorkerPool(
            self.config, self.reactor,
            [BoundListener(11, socket.AF_INET), BoundListener(12, socket.AF_INET6)],
            enqueued=lambda: self.enqueued.append(True), command=["worker"])

    def logged(self, text):
        return [e for e in self.events if text in formatEvent(e)]

    def test_restart_delay_doubles_up_to_a_minute(self):
        self.assertEqual([pool.restart_delay(n) for n in range(1, 9)],
                         [1, 2, 4, 8, 16, 32, 60, 60])

    def test_workers_get_the_sockets_and_the_config(self):
        self.pool.start()
        self.assertEqual(len(self.reactor.spawned), 2)  # twistd's process is the third
        for number, (process, args, fds) in enumerate(self.reactor.spawned, 1):
            self.assertEqual(args, ["worker", "--worker", str(number),
                                    "--socket", "3:AF_INET", "--socket", "4:AF_INET6"])
            self.assertEqual(fds, {0: "w", 1: "r", 2: "r", 3: 11, 4: 12})
            [(fd, line)] = process.written
            self.assertEqual(fd, 0)
            self.assertEqual(Handshake.decode(line).config, self.config)
        self.assertEqual(len(self.logged("worker 2 started (pid 1001)")), 1)

    def test_a_worker_that_ends_is_restarted_with_a_back_off(self):
        self.pool.start()
        process = self.reactor.spawned[0][0]
        self.reactor.advance(100)  # a long run: the next crash counts as the first
        process.end(signal_number=9)
        [event] = self.logged("worker 1 (pid 1000) ended unexpectedly after 100.0 s: "
                              "killed by signal 9 (SIGKILL); starting it again in 1 s")
        self.assertEqual(event["log_level"], LogLevel.error)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.spawned), 3)
        delays = []
        for _ in range(3):  # short runs: 2, 4, 8 s
            self.reactor.spawned[-1][0].end(code=1)
            delays.append(self.reactor.getDelayedCalls()[0].getTime() - self.reactor.seconds())
            self.reactor.advance(delays[-1])
        self.assertEqual(delays, [2, 4, 8])
        self.assertEqual(len(self.logged("exit status 1; starting it again in 8 s")), 1)

    def test_stop_terminates_and_waits_for_every_worker(self):
        self.pool.start()
        first, second = (p for p, _, _ in self.reactor.spawned)
        second.end(code=1)  # a restart is pending
        stopped = self.pool.stop()
        self.assertEqual(first.signals, ["TERM"])
        self.assertNoResult(stopped)
        first.end()
        self.successResultOf(stopped)
        self.assertEqual(len(self.logged("worker 1 (pid 1000) stopped: exit status 0")), 1)
        self.reactor.advance(3600)
        self.assertEqual(len(self.reactor.spawned), 2)  # no restart while stopping

    def test_a_worker_that_does_not_stop_is_killed_after_the_grace(self):
        self.pool.start()
        stopped = self.pool.stop()
        self.reactor.advance(self.config.shutdown_grace + pool.KILL_AFTER - 0.1)
        self.assertEqual(self.reactor.spawned[0][0].signals, ["TERM"])
        self.reactor.advance(0.1)
        for process, _, _ in self.reactor.spawned:
            self.assertEqual(process.signals, ["TERM", "KILL"])
            process.end(signal_number=9)
        self.successResultOf(stopped)
        self.assertEqual(len(self.logged("did not stop in time: killed")), 2)

    def test_a_worker_that_cannot_be_spawned_is_tried_again(self):
        self.reactor.failures = [PermissionError(13, "Permission denied")] * 2
        self.pool.start()
        self.assertEqual(len(self.flushLoggedErrors(PermissionError)), 2)
        self.assertEqual(len(self.logged("worker 2 could not be started; trying again in 1 s")),
                         1)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_workers_run_in_this_process_interpreter(self):
        # by default; the command given here (as tests do) is run as it is
        self.pool.start()
        self.assertEqual(set(self.reactor.executables), {"worker"})
        default = pool.WorkerPool(self.config, self.reactor, [], enqueued=lambda: None)
        self.assertEqual(default.command[1:], ["-m", "mailgw.workers.child"])
        self.assertEqual(default.executable, pool.RUNNING_INTERPRETER)

    def test_sighup_is_passed_on(self):
        self.pool.start()
        self.pool.signal_all("HUP")
        self.assertEqual([p.signals for p, _, _ in self.reactor.spawned], [["HUP"], ["HUP"]])


class WorkerOutputTests(unittest.TestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.enqueued = []
        self.pool = pool.WorkerPool(parse_config({"server": {"workers": 2}}), Clock(), [],
                                    enqueued=lambda: self.enqueued.append(True))
        self.protocol = pool.WorkerProtocol(self.pool, pool.Worker(1))

    def test_log_lines_are_logged_here_with_the_worker_number(self):
        record = {"time": "2026-12-01T00:00:00.000+00:00", "level": "warn",
                  "namespace": "mailgw.auth.guard", "trace": "LKY9PTXP",
                  "message": "[LKY9PTXP] Authentication failure for 192.0.2.7"}
        line = json.dumps(record).encode() + b"\n"
        self.protocol.childDataReceived(1, line[:10])  # lines may come in pieces
        self.assertEqual(self.events, [])
        self.protocol.childDataReceived(1, line[10:])
        [event] = self.events
        self.assertEqual(formatEvent(event),
                         "worker 1: [LKY9PTXP] Authentication failure for 192.0.2.7")
        self.assertEqual(event["log_namespace"], "mailgw.auth.guard")
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(event["trace"], "LKY9PTXP")

    def test_tracebacks_follow_their_line(self):
        self.protocol.childDataReceived(1, json.dumps({
            "level": "critical", "namespace": "x", "message": "boom",
            "traceback": "Traceback (most recent call last):\nValueError\n"}).encode() + b"\n")
        self.assertEqual(formatEvent(self.events[0]),
                         "worker 1: boom\nTraceback (most recent call last):\nValueError")

    def test_notices_and_plain_text(self):
        self.protocol.childDataReceived(1, b'{"notice": "enqueued"}\n{"notice": "enqueued"}\n')
        self.assertEqual(self.enqueued, [True, True])
        self.assertEqual(self.events, [])
        self.protocol.childDataReceived(2, b"mailgw: config error\nunfinished")
        self.assertEqual(formatEvent(self.events[0]), "worker 1: mailgw: config error")
        self.assertEqual(self.events[0]["log_level"], LogLevel.warn)
        self.pool.workers[1].started_at = 0
        self.protocol.processEnded(Failure(error.ProcessTerminated(1)))
        self.assertEqual(formatEvent(self.events[1]), "worker 1: unfinished")
