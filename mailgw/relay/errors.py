"""What a delivery can fail with, in one shape for every layer (DNS, TCP,
TLS, SMTP replies), so the runner decides retry or bounce in one place."""
from __future__ import annotations


class DeliveryError(Exception):
    """A delivery (or connection) did not succeed.

    @ivar code: the SMTP reply code, or C{None} when no reply decided it
        (DNS, connection, TLS, timeout).
    @ivar text: what to record and, if it becomes final, to put in a bounce.
    @ivar permanent: retrying cannot help (5xx, null MX, no such domain).
    @ivar host: the remote host it concerns, when one was reached or tried.
    """

    def __init__(self, text: str, code: int | None = None, permanent: bool = False,
                 host: str | None = None):
        super().__init__(text)
        self.text = text
        self.code = code
        self.permanent = permanent
        self.host = host

    def __repr__(self):
        return (f"DeliveryError({self.text!r}, code={self.code!r}, "
                f"permanent={self.permanent!r}, host={self.host!r})")


def temporary(text: str, host: str | None = None) -> DeliveryError:
    return DeliveryError(text, None, False, host)


def permanent(text: str, code: int | None = None, host: str | None = None) -> DeliveryError:
    return DeliveryError(text, code, True, host)
