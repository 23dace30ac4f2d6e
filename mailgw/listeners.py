"""Listening sockets as services that bind before twistd drops privileges.

twistd calls C{privilegedStartService} on the application's services while
still root, then switches user, then calls C{startService}: every listener is
a child of the gateway's C{MultiService} from construction and binds in
C{privilegedStartService}, so ports below 1024 work with C{twistd -u}. A port
that cannot be bound is a L{StartupError}, which twistd reports as one line
and a non-zero exit (see C{docs/deployment.md}).

With C{[server] workers} above 1 the SMTP listeners are I{shared}: worker
processes inherit the bound sockets and serve them through
L{AdoptedListenerService} (docs/deployment.md, "Several processes on one
machine").
"""
from __future__ import annotations

import os
import socket

from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class StartupError(SystemExit):
    """The gateway cannot start: one line for the operator, exit status 1.

    A C{SystemExit} so that twistd, which lets it through, prints the line
    and exits non-zero instead of logging a traceback.
    """

    def __init__(self, message: str):
        super().__init__(f"mailgw: {message}")


def parse_endpoint(reactor, description: str, where: str):
    """The server endpoint for C{description}.

    @param where: the setting that holds it, for the error (C{listeners[0].endpoint}).
    @raise StartupError: it does not parse (a typo such as C{interfce=}).
    """
    try:
        return endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise StartupError(f"{where}: cannot use {description!r}: {e}") from None


class ListenerService(service.Service):
    """One listening port for C{factory}.

    @ivar port: the C{IListeningPort} once bound, else C{None}.
    """

    def __init__(self, endpoint, factory, description: str, where: str, logged: str,
                 shared: bool = False):
        """
        @param description: the endpoint string (for log lines).
        @param where: the setting it comes from (for errors).
        @param logged: the log line once bound, a format with C{{endpoint}},
            C{{host}} and C{{port}} fields.
        @param shared: worker processes serve this socket too: stopping
            only stops accepting here, and L{close} closes it once they are
            gone (closing shuts the socket down for every process holding it).
        """
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.where = where
        self.logged = logged
        self.shared = shared
        self.port = None

    def privilegedStartService(self):
        super().privilegedStartService()
        self._bind()

    def startService(self):
        super().startService()
        if self.port is None:  # started without the privileged step (tests)
            self._bind()

    def _bind(self):
        outcome = []
        self.endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:
            raise StartupError(f"{self.where}: {self.description!r} did not bind at once")
        if isinstance(outcome[0], Failure):
            raise StartupError(f"{self.where}: cannot listen on {self.description!r}: "
                               f"{outcome[0].getErrorMessage()}")
        self.port = outcome[0]
        address = self.port.getHost()
        if self.shared and address_family(address) == socket.AF_UNIX:
            # A worker that stops would remove the socket's file for all.
            raise StartupError(f"{self.where}: {self.description!r} is a unix socket, "
                               "which workers cannot share (server.workers > 1)")
        # tests and operators read the bound port from this line
        log.info(self.logged, endpoint=self.description,
                 host=getattr(address, "host", address), port=getattr(address, "port", ""))

    def inheritable(self) -> tuple[int, int]:
        """The bound socket for a worker process: C{(file descriptor,
        address family)}, to map into the worker with C{spawnProcess}'s
        C{childFDs} and adopt there (L{AdoptedListenerService})."""
        return self.port.fileno(), address_family(self.port.getHost())

    def stopService(self):
        super().stopService()
        if self.shared and self.port is not None:
            self.port.pauseProducing()  # IPushProducer: no more accept() here
            return None
        return self.close()

    def close(self):
        """Close the socket (a shared one once no worker holds it any more).

        @return: a Deferred firing when closed, or C{None}.
        """
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


def address_family(address) -> int:
    """The socket address family of an C{IAddress} from C{getHost()}."""
    if isinstance(address, IPv4Address):
        return socket.AF_INET
    if isinstance(address, IPv6Address):
        return socket.AF_INET6
    return socket.AF_UNIX


class AdoptedListenerService(service.Service):
    """In a worker process: a listening socket inherited from the twistd
    process, bound there before privileges were dropped, served here with
    C{IReactorSocket.adoptStreamPort}.

    Its port does not shut the socket down when it stops (Twisted leaves an
    adopted socket's shutdown to its owner), so a worker that stops or dies
    never stops the other processes from accepting.

    @ivar port: the C{IListeningPort} once serving, else C{None}.
    """

    def __init__(self, reactor, fd: int, family: int, factory, description: str,
                 logged: str):
        """
        @param fd: the inherited descriptor (closed here once adopted).
        @param family: its address family (C{socket.AF_INET} or C{AF_INET6}).
        @param logged: the log line once serving, as for L{ListenerService}.
        """
        self.reactor = reactor
        self.fd = fd
        self.family = family
        self.factory = factory
        self.description = description
        self.logged = logged
        self.port = None

    def privilegedStartService(self):
        super().privilegedStartService()
        self._adopt()

    def startService(self):
        super().startService()
        self._adopt()  # started without the privileged step (tests)

    def _adopt(self):
        if self.fd is None:
            return
        # adoptStreamPort duplicates the descriptor; the inherited one is ours to close
        fd, self.fd = self.fd, None
        try:
            self.port = self.reactor.adoptStreamPort(fd, self.family, self.factory)
        finally:
            os.close(fd)
        address = self.port.getHost()
        log.info(self.logged, endpoint=self.description, host=address.host, port=address.port)

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None
