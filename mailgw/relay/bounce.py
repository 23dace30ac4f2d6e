"""Bounces: the RFC 3464 delivery status notification sent to the envelope
sender of a message that failed, built as bytes (CRLF line ends) and queued
like any message: from the null sender C{<>} (so it can never bounce in
turn), on the original message's server, with no credential.

The report has three parts (RFC 3462 multipart/report): a note for people,
the machine-readable message/delivery-status, and the original message's
header section (text/rfc822-headers), not its body.
"""
from __future__ import annotations

import re
import secrets
from email.utils import formatdate

from mailgw.model import MessageEnvelope, QueueEntry, generate_token

#: how much of the original message is searched for its header section
HEADER_LIMIT = 64 * 1024
#: longest diagnostic kept (a header line must stay under 998 octets)
DIAGNOSTIC_LIMIT = 800

_ENHANCED = re.compile(r"^\d{3}[ -]?([245]\.\d{1,3}\.\d{1,3})\b")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def header_section(head: bytes) -> bytes:
    """The header section at the start of a message (up to the first empty
    line), with its last CRLF; a message with no empty line in the first
    L{HEADER_LIMIT} bytes gives those bytes cut at a line end."""
    head = head[:HEADER_LIMIT]
    end = head.find(b"\r\n\r\n")
    if end >= 0:
        return head[:end + 2]
    cut = head.rfind(b"\r\n")
    return head[:cut + 2] if cut >= 0 else b""


def status_code(code: int | None, text: str, expired: bool) -> str:
    """The RFC 3463 status for the report: the server's enhanced code when
    its reply carried one, 4.4.7 (delivery time expired) when the message
    was given up after temporary failures, else 5.0.0."""
    match = _ENHANCED.match(text or "")
    if match and code is not None:
        return match.group(1)
    return "4.4.7" if expired else "5.0.0"


def one_line(text: str, limit: int = DIAGNOSTIC_LIMIT) -> str:
    """Text fit for a header field: no control characters, bounded length."""
    return _CONTROL.sub(" ", text).strip()[:limit]


def build_bounce(entry: QueueEntry, *, hostname: str, now: float, code: int | None,
                 text: str, remote_host: str | None, expired: bool,
                 original_head: bytes) -> tuple[MessageEnvelope, bytes]:
    """The bounce of C{entry} (whose C{mail_from} must not be empty).

    @param code: the last SMTP reply code, C{None} when no server decided.
    @param text: why it failed (the reply, or the DNS or connection problem).
    @param remote_host: the host that answered last (C{"name [address]"}).
    @param expired: given up after C{max_queue_age} of temporary failures.
    @param original_head: the first bytes of the original message.
    @return: C{(envelope, message bytes)} ready for C{enqueue}.
    """
    if not entry.mail_from:
        raise ValueError("a message from the null sender is never bounced")
    token = generate_token(12)
    reason = one_line(text)
    status = status_code(code, reason, expired)
    parts = [
        ("text/plain; charset=utf-8", _note(entry, hostname, reason, expired)),
        ("message/delivery-status", CRLF.join(_dsn_fields(
            entry, hostname, now, code, reason, status, remote_host)) + CRLF),
        ("text/rfc822-headers", header_section(original_head)),
    ]
    body = _multipart(_headers(entry, hostname, now, token), parts)
    envelope = MessageEnvelope(
        token=token, server_id=entry.server_id, credential_id=None, mail_from="",
        rcpt_to=(entry.mail_from,), sender_domain=None, protocol="bounce")
    return envelope, body


CRLF = "\r\n"


def _headers(entry, hostname, now, token) -> list[str]:
    return [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{entry.mail_from}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {formatdate(now)}",
        f"Message-ID: <{token}.{secrets.token_hex(4)}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
    ]


def _note(entry, hostname, reason, expired) -> str:
    """The part for people."""
    why = ("it kept failing temporarily until the queue's time limit passed"
           if expired else "the receiving side refused it permanently")
    return CRLF.join([
        f"This is the mail system at {hostname}.", "",
        f"Your message (queue id {entry.token}) could not be delivered to",
        f"<{entry.rcpt_to}>: {why}.", "", f"    {reason}", ""])


def _multipart(headers: list[str], parts) -> bytes:
    """A multipart/report message of C{parts} (C{(content type, str or bytes)})."""
    boundary = f"mailgw-{secrets.token_hex(12)}"
    headers = headers + ["Content-Type: multipart/report; report-type=delivery-status;",
                         f' boundary="{boundary}"']
    out = [(CRLF.join(headers) + CRLF + CRLF + "This is a MIME-encapsulated delivery "
            "status notification." + CRLF).encode("utf-8")]
    for content_type, content in parts:
        if isinstance(content, str):
            content = content.encode("utf-8")
        out.append(f"{CRLF}--{boundary}{CRLF}Content-Type: {content_type}{CRLF}{CRLF}"
                   .encode() + content)
    out.append(f"{CRLF}--{boundary}--{CRLF}".encode("ascii"))
    return b"".join(out)


def _dsn_fields(entry, hostname, now, code, reason, status, remote_host) -> list[str]:
    address_type = "rfc822" if entry.rcpt_to.isascii() else "utf-8"
    fields = [
        f"Reporting-MTA: dns; {hostname}",
        f"X-Mailgw-Queue-ID: {entry.token}",
        f"Arrival-Date: {formatdate(entry.created_at)}",
        "",
        f"Final-Recipient: {address_type}; {entry.rcpt_to}",
        "Action: failed",
        f"Status: {status}",
    ]
    if remote_host:
        fields.append(f"Remote-MTA: dns; {one_line(remote_host.split(' [')[0], 255)}")
    if code is not None:
        fields.append(f"Diagnostic-Code: smtp; {reason}")
    fields.append(f"Last-Attempt-Date: {formatdate(now)}")
    return fields
