"""What is known of one connection: the facts the delivery avatar and the
Received header need, kept apart from the protocol's parsing state."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Session:
    """The facts of one connection (also the mind of its logins)."""

    trace_id: str
    hostname: str
    client_ip: str
    helo: str | None = None
    esmtp: bool = False
    tls: bool = False
    #: the mechanism that authenticated the session, "IP", or None
    mechanism: str | None = None
    #: the connection's L{mailgw.auth.guard.ConnectionAttempts}
    attempts: object = None

    @property
    def protocol_word(self) -> str:
        """RFC 3848's word for the Received header."""
        word = "ESMTP"
        if self.tls:
            word += "S"
        if self.mechanism not in (None, "IP"):
            word += "A"
        return word
