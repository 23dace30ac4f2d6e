"""Why the core refuses a submission: one exception class per reason.

The core raises these and knows nothing of SMTP codes or API error names;
each adapter keeps its own table from class to wire words. C{reason} is a
short, fixed text for the operator's log line and the metric label: it never
contains message content or a secret.
"""
from __future__ import annotations

import errno


class Refusal(Exception):
    """The submission is refused; nothing of it was stored.

    @ivar reason: a short fixed text for logs and metrics.
    """

    reason = "refused"

    def __str__(self) -> str:
        return self.reason


class MessageTooLarge(Refusal):
    """The stored message (Received header included) is over the size limit."""

    reason = "message too large"

    def __init__(self, max_size: int):
        super().__init__(max_size)
        #: the limit in bytes
        self.max_size = max_size


class HeaderSectionTooLarge(Refusal):
    """The header section is over C{[limits] max_header_size_kb}; it is never cut."""

    reason = "header section too large"

    def __init__(self, max_size: int):
        super().__init__(max_size)
        #: the limit in bytes
        self.max_size = max_size


class MalformedHeaderSection(Refusal):
    """The header section holds bytes that parsers read differently.

    @ivar what: which fault (one of the C{MalformedHeaderSection.*} texts).
    """

    BARE_CR = "bare CR"
    NUL = "NUL byte"
    NAME = "invalid header field name"
    NOT_A_FIELD = "line that is not a header field"
    BLANK_CONTINUATION = "continuation line of white space only"
    FOLD_IN_QUOTE = "From or Sender folded inside a quoted string or comment"

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what

    @property
    def reason(self) -> str:
        return f"header section: {self.what}"


class MalformedBody(Refusal):
    """The body holds a NUL byte, which RFC 5322 §3.5 and RFC 6152 exclude."""

    reason = "NUL byte in body"


class SpoolFailure(Refusal):
    """The spool could not take the message (a full disk, an I/O error):
    a temporary failure; nothing was stored.

    @ivar full: the disk or quota is full (C{ENOSPC}, C{EDQUOT}).
    """

    def __init__(self, error: OSError):
        super().__init__(error.errno)
        self.full = error.errno in (errno.ENOSPC, errno.EDQUOT)

    @property
    def reason(self) -> str:
        return "spool full" if self.full else "spool not writable"


class LoopDetected(Refusal):
    """Too many C{Received:} headers name this gateway."""

    reason = "loop detected"


class SenderNotAuthorised(Refusal):
    """No tried header (From, then Sender where allowed) passes the sender policy."""

    reason = "From/Sender not authorised"


class ServerSuspended(Refusal):
    """The credential's server or its organization is suspended."""

    reason = "server suspended"


class CredentialGone(Refusal):
    """The credential that authenticated the session no longer exists."""

    reason = "credential removed"
