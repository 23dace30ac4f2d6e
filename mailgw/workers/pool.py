"""twistd's side of C{[server] workers}: the worker processes, started once
its store is open, watched, restarted and stopped (docs/deployment.md,
"Several processes on one machine").

Workers are started after twistd has dropped privileges, as its user: they
never need root, since the sockets they serve were bound before the drop and
are handed to them as inherited descriptors (C{spawnProcess}' C{childFDs}).
Their log lines come back over a pipe and are logged here, each prefixed with
C{worker N:}, so that one log holds every process's lines.

A worker that ends while the gateway runs is logged with its exit status or
signal and started again after L{restart_delay}: 1 s, doubling with each
further crash that follows a short run, up to a minute, so that a worker
that cannot start does not spin.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys

from twisted.internet import defer, error, protocol
from twisted.logger import Logger, LogLevel, InvalidLogLevelError

from mailgw.workers.channel import ENQUEUED, Handshake

log = Logger()

#: seconds before the first restart of a worker that ended unexpectedly
BASE_DELAY = 1.0
#: the longest wait before a restart
MAX_DELAY = 60.0
#: a worker that ran this many seconds before it ended is not crash-looping:
#: its restart waits BASE_DELAY again
STABLE_AFTER = 30.0
#: seconds past C{shutdown_grace} a worker may take to end before it is killed
KILL_AFTER = 5.0
#: the interpreter this process runs in, as the kernel has it open: a worker
#: started through it needs no search permission on the folders of
#: C{sys.executable}'s path, which the user twistd switched to may lack (a
#: virtualenv whose interpreter lives in root's home)
RUNNING_INTERPRETER = "/proc/self/exe"
#: where a worker finds its inherited sockets: descriptors 3, 4, ... in
#: C{[[listeners]]} order (0, 1 and 2 are the pipes)
FIRST_SOCKET_FD = 3


def restart_delay(crashes: int) -> float:
    """Seconds to wait before starting a worker again after C{crashes}
    unexpected ends in a row that each followed a short run (1 for the
    first): 1, 2, 4, ... up to L{MAX_DELAY}."""
    return min(MAX_DELAY, BASE_DELAY * 2 ** (max(crashes, 1) - 1))


def describe_end(reason) -> str:
    """How a process ended, for the log: C{exit status 1},
    C{killed by signal 9 (SIGKILL)}."""
    value = reason.value
    signal_number = getattr(value, "signal", None)
    if signal_number:
        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            name = "?"
        return f"killed by signal {signal_number} ({name})"
    return f"exit status {getattr(value, 'exitCode', None)}"


class Worker:
    """One worker slot: its number, the process now in it, and its crashes."""

    def __init__(self, number: int):
        self.number = number
        self.transport = None
        self.pid = None
        self.started_at = 0.0
        #: unexpected ends in a row after short runs
        self.crashes = 0
        #: the pending restart (an C{IDelayedCall}), if any
        self.restart = None
        #: fires when the running process has ended
        self.ended = None

    @property
    def alive(self) -> bool:
        return self.transport is not None


class WorkerPool:
    """The C{[server] workers - 1} worker processes of twistd's process.

    Not a child service of the gateway: the gateway starts it once its store
    is open, and stops it first on shutdown, so that the workers drain their
    sessions while twistd's process drains its own; it closes the shared
    sockets only after L{stop}'s Deferred has fired.
    """

    def __init__(self, config, reactor, listeners, enqueued, notify_enqueued=True,
                 tls=None, command=None):
        """
        @param listeners: the SMTP L{mailgw.listeners.ListenerService}s, bound
            and shared, in C{[[listeners]]} order.
        @param enqueued: called when a worker has committed a message.
        @param notify_enqueued: whether workers should say so (a relay runs here).
        @param tls: the L{mailgw.tls.TLSOptions} served here, whose current
            certificate and key each worker gets at its start; or C{None}.
        @param command: the worker's argv before its options (tests);
            default C{python -m mailgw.workers.child}, run by this process's
            own interpreter (L{RUNNING_INTERPRETER} where there is one).
        """
        self.config = config
        self.reactor = reactor
        self.listeners = listeners
        self.enqueued = enqueued
        self.command = command or [sys.executable, "-m", "mailgw.workers.child"]
        self.executable = self.command[0]
        if command is None and os.path.exists(RUNNING_INTERPRETER):
            self.executable = RUNNING_INTERPRETER
        self.workers = {n: Worker(n) for n in range(1, config.server.workers)}
        self.stopping = False
        self.notify_enqueued = notify_enqueued
        self.tls = tls

    def start(self) -> None:
        """Start every worker (in twistd's process, after the privilege drop)."""
        for worker in self.workers.values():
            self._spawn(worker)

    def _spawn(self, worker: Worker) -> None:
        worker.restart = None
        if self.stopping:
            return
        child_fds = {0: "w", 1: "r", 2: "r"}
        argv = [*self.command, "--worker", str(worker.number)]
        for i, listener in enumerate(self.listeners):
            fd, family = listener.inheritable()
            child_fds[FIRST_SOCKET_FD + i] = fd
            argv += ["--socket", f"{FIRST_SOCKET_FD + i}:{socket.AddressFamily(family).name}"]
        process = WorkerProtocol(self, worker)
        worker.started_at = self.reactor.seconds()
        try:
            worker.transport = self.reactor.spawnProcess(
                process, self.executable, argv, env=dict(os.environ), childFDs=child_fds)
        except Exception:
            worker.crashes += 1
            delay = restart_delay(worker.crashes)
            log.failure("worker {n} could not be started; trying again in {delay:g} s",
                        n=worker.number, delay=delay)
            worker.restart = self.reactor.callLater(delay, self._spawn, worker)
            return
        worker.ended = defer.Deferred()
        worker.pid = worker.transport.pid
        pem = None if self.tls is None else self.tls.pem()
        worker.transport.writeToChild(
            0, Handshake(self.config, self.notify_enqueued, pem).encode())
        log.info("worker {n} started (pid {pid})", n=worker.number, pid=worker.pid)

    def ended(self, worker: Worker, reason) -> None:
        """C{worker}'s process has ended (L{WorkerProtocol.processEnded})."""
        how = describe_end(reason)
        pid, worker.transport, worker.pid = worker.pid, None, None
        ended, worker.ended = worker.ended, None
        if self.stopping:
            log.info("worker {n} (pid {pid}) stopped: {how}", n=worker.number, pid=pid, how=how)
        else:
            ran = self.reactor.seconds() - worker.started_at
            worker.crashes = 1 if ran >= STABLE_AFTER else worker.crashes + 1
            delay = restart_delay(worker.crashes)
            log.error("worker {n} (pid {pid}) ended unexpectedly after {ran:.1f} s: {how}; "
                      "starting it again in {delay:g} s", n=worker.number, pid=pid, ran=ran,
                      how=how, delay=delay)
            worker.restart = self.reactor.callLater(delay, self._spawn, worker)
        if ended is not None:
            ended.callback(None)

    def signal_all(self, name: str) -> None:
        """Send the signal C{name} (C{"HUP"}, C{"TERM"}) to every live worker."""
        for worker in self.workers.values():
            if worker.alive:
                try:
                    worker.transport.signalProcess(name)
                except error.ProcessExitedAlready:
                    pass

    def stop(self) -> defer.Deferred:
        """SIGTERM to every worker: each stops accepting and drains its
        sessions within C{shutdown_grace}, as one process does. A worker
        still there L{KILL_AFTER} seconds after that is killed.

        @return: a Deferred firing once every worker has ended (never failing).
        """
        self.stopping = True
        for worker in self.workers.values():
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
        waiting = [w.ended for w in self.workers.values() if w.alive]
        self.signal_all("TERM")
        if not waiting:
            return defer.succeed(None)
        timer = self.reactor.callLater(self.config.shutdown_grace + KILL_AFTER, self._kill)
        done = defer.DeferredList(waiting)

        def finished(_):
            if timer.active():
                timer.cancel()
        return done.addCallback(finished)

    def _kill(self) -> None:
        for worker in self.workers.values():
            if worker.alive:
                log.warn("worker {n} (pid {pid}) did not stop in time: killed",
                         n=worker.number, pid=worker.pid)
        self.signal_all("KILL")


class WorkerProtocol(protocol.ProcessProtocol):
    """One worker process seen from twistd's: its output logged here with
    C{worker N:} before each line, its notices passed on, its end reported
    to the pool."""

    def __init__(self, pool: WorkerPool, worker: Worker):
        self.pool = pool
        self.worker = worker
        self._partial = {1: b"", 2: b""}
        self._loggers = {}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd not in self._partial:
            return
        *lines, self._partial[fd] = (self._partial[fd] + data).split(b"\n")
        for line in lines:
            self._line(fd, line)

    def _line(self, fd: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if not text:
            return
        record = None
        if fd == 1 and text.startswith("{"):
            try:
                record = json.loads(text)
            except ValueError:
                record = None
        if isinstance(record, dict) and record.get("notice") == ENQUEUED:
            self.pool.enqueued()
        elif isinstance(record, dict) and "message" in record:
            self._emit(record)
        else:
            level = "info" if fd == 1 else "warn"
            self._emit({"level": level, "namespace": "mailgw.workers", "message": text})

    def _emit(self, record: dict) -> None:
        namespace = str(record.get("namespace") or "mailgw.workers")
        logger = self._loggers.get(namespace)
        if logger is None:
            logger = self._loggers[namespace] = Logger(namespace=namespace)
        try:
            level = LogLevel.levelWithName(str(record.get("level")))
        except InvalidLogLevelError:
            level = LogLevel.info
        text = str(record["message"])
        if record.get("traceback"):
            text += "\n" + str(record["traceback"]).rstrip("\n")
        fields = {"trace": record["trace"]} if record.get("trace") else {}
        if namespace == "log_legacy":  # Twisted's own lines: shown as [-], as here
            fields["log_system"] = "-"
        logger.emit(level, "worker {worker}: {text}", worker=self.worker.number, text=text,
                    **fields)

    def processEnded(self, reason) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self._line(fd, rest)
        self._partial = {1: b"", 2: b""}
        self.pool.ended(self.worker, reason)
