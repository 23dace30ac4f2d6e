"""The listener's protocol factory: per-listener settings, the portal, the TLS
options, and the connection caps (global and per client address)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from twisted.internet.protocol import Factory

from mailgw.auth.guard import AuthenticationGuard
from mailgw.metrics import Metrics
from mailgw.smtp.protocol import SubmissionProtocol


@dataclass(frozen=True)
class ProtocolSettings:
    """What one listener's sessions need of the configuration."""

    hostname: str
    max_message_size: int = 14 * 1024 * 1024
    max_recipients: int = 100
    auth_requires_tls: bool = False
    idle_timeout: float = 300.0
    data_timeout: float = 300.0
    min_data_rate: int = 1024
    max_session_time: float = 0.0
    tls_handshake_timeout: float = 30.0
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    allow_address_literals: bool = False


class SubmissionFactory(Factory):
    """Builds the sessions of one SMTP listener and enforces its caps."""

    protocol = SubmissionProtocol
    noisy = False
    #: False until the gateway's store is open: sessions get 421 meanwhile
    ready = True

    def __init__(self, settings: ProtocolSettings, portal, clock, tls_options=None,
                 guard=None, metrics=None):
        """
        @param portal: the portal sessions log in through (in the gateway, the
            L{mailgw.auth.guard.GuardedPortal} watched by C{guard}).
        @param tls_options: None (no STARTTLS), or an object whose
            C{server_options()} gives the current TLS connection creator.
        @param guard: the L{AuthenticationGuard} shared by every listener and
            the HTTP API; a new one that counts nothing by default.
        """
        self.settings = settings
        self.portal = portal
        self.clock = clock
        self.tls_options = tls_options
        self.guard = guard if guard is not None else AuthenticationGuard()
        self.metrics = metrics if metrics is not None else Metrics()
        #: the sessions open now, for a graceful shutdown
        self.sessions = set()
        self.connections = Counter()
        self.total = 0

    def buildProtocol(self, addr):
        return self.protocol(self)

    def admit(self, protocol) -> str | None:
        """Count a new connection.

        @return: C{None}, or why it is refused (the cap it would pass).
        """
        ip = protocol.client_ip
        refused = None
        if self.total >= self.settings.max_connections:
            refused = "too many connections"
        elif self.connections[ip] >= self.settings.max_connections_per_ip:
            refused = "too many connections from this address"
        if refused is not None:
            protocol._admitted = False
            return refused
        protocol._admitted = True
        self.total += 1
        self.connections[ip] += 1
        self.sessions.add(protocol)
        self.metrics.open_connections.inc()
        return None

    def release(self, protocol) -> None:
        if not getattr(protocol, "_admitted", False):
            return
        protocol._admitted = False
        self.sessions.discard(protocol)
        self.metrics.open_connections.dec()
        ip = protocol.client_ip
        self.total -= 1
        self.connections[ip] -= 1
        if self.connections[ip] <= 0:
            del self.connections[ip]
