"""A worker process: ``python -m mailgw.workers.child --worker N --socket
3:AF_INET ...``, started only by L{mailgw.workers.pool.WorkerPool}.

It serves the SMTP listeners whose sockets it inherited, with its own store
connection, throttles and TLS options (reloaded on SIGHUP and by the
modification-time check, as in twistd's process), and nothing else: the HTTP
API, the web interface, the metrics listener, the relay, webhooks and the DNS
monitor run in twistd's process only (docs/deployment.md). Its log events go
to twistd's process over its standard output (L{mailgw.workers.channel}).

It stops as twistd's process does on SIGTERM or SIGINT: it stops accepting
and drains its sessions within C{shutdown_grace}; and it stops the same way
when its standard input ends, which means twistd's process is gone.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from collections.abc import Callable

from twisted.internet import main as reactor_main
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger, globalLogBeginner
from zope.interface import implementer

from mailgw.workers.channel import ENQUEUED, ParentChannel, read_handshake

log = Logger()


@dataclass(frozen=True)
class WorkerRole:
    """What makes a L{mailgw.service.GatewayService} a worker's."""
    #: 1 to C{workers - 1} (twistd's own process is 0)
    number: int
    #: C{(descriptor, address family)} per C{[[listeners]]} table, in order
    sockets: tuple[tuple[int, int], ...]
    #: called after each committed enqueue
    enqueued: Callable[[], None]
    #: the TLS certificate chain and key twistd's process serves, or C{None}
    tls_pem: tuple[bytes, bytes] | None = field(default=None, repr=False)


@implementer(IReadDescriptor)
class ParentWatch:
    """The worker's standard input, read until it ends: twistd's process
    holds the other end, so its end of file means that process is gone (even
    killed with SIGKILL), and the worker stops rather than serve alone."""

    def __init__(self, fd: int, gone: Callable[[], None]):
        self.fd = fd
        self.gone = gone
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)

    def fileno(self) -> int:
        return self.fd

    def doRead(self):
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            return reactor_main.CONNECTION_LOST
        return None if data else reactor_main.CONNECTION_DONE

    def connectionLost(self, reason) -> None:
        self.gone()

    def logPrefix(self) -> str:
        return "main process"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m mailgw.workers.child")
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--socket", action="append", default=[],
                        help="FD:FAMILY of an inherited listening socket, in listener order")
    return parser.parse_args(argv)


def _sockets(specs) -> tuple[tuple[int, int], ...]:
    found = []
    for spec in specs:
        fd, _, family = spec.partition(":")
        found.append((int(fd), int(socket.AddressFamily[family])))
    return tuple(found)


def main(argv=None) -> None:
    """Run one worker until it is told to stop; exit 1 when it cannot start."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the TLS reload handler is in
    args = parse_args(argv)
    try:
        handshake = read_handshake(0)
    except ValueError as e:
        sys.exit(f"mailgw: worker {args.worker}: {e}")
    from twisted.internet import reactor

    from mailgw.tap import SWITCH_INTERVAL
    sys.setswitchinterval(SWITCH_INTERVAL)  # as twistd's process (mailgw.tap)
    channel = ParentChannel(1)
    observer = channel.observer(reactor)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    reactor.addSystemEventTrigger("after", "shutdown", observer.flush)

    from mailgw.config import ConfigError
    from mailgw.service import GatewayService
    from mailgw.tls import TLSConfigError
    notify = (lambda: channel.notice(ENQUEUED)) if handshake.notify_enqueued else (
        lambda: None)
    role = WorkerRole(args.worker, _sockets(args.socket), notify, handshake.tls_pem)
    try:
        gateway = GatewayService(handshake.config, reactor, worker=role)
    except (TLSConfigError, ConfigError) as e:
        sys.exit(f"mailgw: {e}")
    stopping = []

    def stop():
        if not stopping:
            stopping.append(True)
            reactor.stop()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: reactor.callFromThread(stop))
    reactor.addReader(ParentWatch(0, stop))
    gateway.privilegedStartService()
    reactor.callWhenRunning(gateway.startService)
    reactor.addSystemEventTrigger("before", "shutdown", gateway.stopService)
    reactor.run(installSignalHandlers=False)


if __name__ == "__main__":
    main()
