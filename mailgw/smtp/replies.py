"""Every fixed SMTP reply of the wire contract (C{docs/smtp.md}), in one
place, so that the texts clients match on are written exactly once.

A L{SMTPReply} is also an exception: policy code raises it and the protocol
sends it as it is.
"""
from __future__ import annotations


class SMTPReply(Exception):
    """A complete reply: code and text (no CRLF)."""

    def __init__(self, code: int, text: str):
        super().__init__(code, text)
        self.code = code
        self.text = text
        self._wire = f"{code} {text}\r\n".encode()

    def __str__(self) -> str:
        return f"{self.code} {self.text}"

    def encode(self) -> bytes:
        return self._wire


R = SMTPReply

OK = R(250, "OK")
CLOSING = R(221, "Closing Connection")
GO_AHEAD = R(354, "Go ahead")
TLS_READY = R(220, "Ready to start TLS")

LINE_TOO_LONG = R(500, "Line too long")
UNSUPPORTED = R(502, "Invalid/unsupported command")
TLS_NOT_AVAILABLE = R(502, "TLS not available")
TLS_ALREADY_ACTIVE = R(503, "TLS already active")
PROXY_ERROR = R(502, "Proxy Error")

HELO_SYNTAX = R(501, "Syntax: EHLO hostname")
MAIL_SYNTAX = R(501, "Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = R(501, "Syntax: RCPT TO:<address>")
RCPT_EMPTY = R(501, "RCPT TO should not be empty")
RCPT_INVALID = R(501, "Invalid RCPT TO")
UNSUPPORTED_PARAMETER = R(555, "Unsupported parameter")
MAIL_FIRST = R(503, "EHLO/HELO first please")
RCPT_FIRST = R(503, "EHLO/HELO and MAIL FROM first please")
DATA_FIRST = R(503, "HELO/EHLO, MAIL FROM and RCPT TO before sending data")
TOO_MANY_RECIPIENTS = R(452, "Too many recipients")
ADDRESS_LITERAL = R(553, "Address literals are not accepted")

AUTH_SYNTAX = R(501, "Syntax: AUTH mechanism")
AUTH_UNKNOWN_MECHANISM = R(504, "Unrecognized authentication type")
AUTH_ALREADY = R(503, "Already authenticated")
AUTH_IN_TRANSACTION = R(503, "AUTH not permitted during a mail transaction")
AUTH_NEEDS_TLS = R(530, "Must issue a STARTTLS command first")
AUTH_CANCELLED = R(501, "Authentication cancelled")
AUTH_LINE_TOO_LONG = R(501, "Line too long, authentication cancelled")
AUTH_BAD_BASE64 = R(501, "Invalid base64 data")
AUTH_PLAIN_MALFORMED = R(501, "Malformed AUTH PLAIN response")
AUTH_INVALID_CREDENTIAL = R(535, "Invalid credential")
AUTH_DENIED = R(535, "Denied")
AUTH_REQUIRED = R(530, "Authentication required")
SERVER_SUSPENDED = R(535, "Mail server has been suspended")

LOOP_DETECTED = R(550, "Loop detected")
NUL_IN_BODY = R(554, "Message body contains a NUL byte")
SENDER_NOT_VALID = R(530, "From/Sender name is not valid")
TEMPORARY_FAILURE = R(451, "Temporary failure, please try again later")
INSUFFICIENT_STORAGE = R(452, "Insufficient system storage")


def granted(full_name: str) -> SMTPReply:
    return R(235, f"Granted for {full_name}")


def queued(token: str) -> SMTPReply:
    return R(250, f"OK: queued as {token}")


def too_large(max_bytes: int) -> SMTPReply:
    return R(552, f"Message too large (maximum size {max_bytes // (1024 * 1024)}MB)")


def header_section_too_large(max_bytes: int) -> SMTPReply:
    return R(552, f"Header section too large (maximum size {max_bytes // 1024}KB)")


def header_section_not_valid(what: str) -> SMTPReply:
    return R(554, f"Header section not valid: {what}")


def greeting(hostname: str, trace_id: str) -> SMTPReply:
    return R(220, f"{hostname} ESMTP mailgw/{trace_id}")


def timeout(hostname: str) -> SMTPReply:
    return R(421, f"{hostname} Timeout, closing connection")


def too_many_connections(hostname: str) -> SMTPReply:
    return R(421, f"{hostname} Too many connections, try again later")


def too_many_auth_failures(hostname: str) -> SMTPReply:
    return R(421, f"{hostname} Too many authentication failures, try again later")


def not_available(hostname: str) -> SMTPReply:
    return R(421, f"{hostname} Service not available, try again later")


def shutting_down(hostname: str) -> SMTPReply:
    return R(421, f"{hostname} Service shutting down")
