"""What the message routes answer, in Postal's shapes: C{messages/message}
(one queued message and the expansions asked for) and C{messages/deliveries}
(its delivery attempts), built from a L{mailgw.store.base.ServerMessage} and
the stored bytes.

Everything here is pure (no reactor, no store), like L{mailgw.web.compose},
so a big message can be parsed on a worker thread. Problems with the
parameters raise L{ParameterError}.
"""
from __future__ import annotations

import base64
import email
import email.errors
import email.policy
import hashlib
from email.header import decode_header, make_header

from mailgw.submission import QUEUE_ID_LENGTH
from mailgw.submission.headers import parse_fields
from mailgw.submission.refusals import MalformedHeaderSection
from mailgw.web.compose import ParameterError

#: the expansions of C{messages/message} this gateway answers; Postal's
#: others (C{inspection}, C{activity_entries}) are ignored, as Postal ignores
#: names it does not know
EXPANSIONS = frozenset({
    "status", "details", "headers", "plain_body", "html_body", "attachments",
    "raw_message"})
#: the expansions privacy mode withholds (null): what the message says
BODY_EXPANSIONS = frozenset({"plain_body", "html_body", "attachments", "raw_message"})
#: the expansions read from the header section alone
HEADER_EXPANSIONS = frozenset({"details", "headers"})


def message_reference(params: dict) -> int | str:
    """The C{id} parameter: a queue entry id (an int, or a string of digits
    that is not a queue id's length) or a queue id (upper-cased, as SMTP's
    C{queued as} and the send response's C{token} spell it).

    @raise ParameterError: C{id} is missing or neither a number nor a string.
    """
    value = params.get("id")
    if value is None:
        raise ParameterError("`id` is required: a message id or token")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ParameterError("`id` must be a message id (a number) or a token (a string)")
    if isinstance(value, int):
        return value
    value = value.strip()
    if value.isascii() and value.isdigit() and len(value) != QUEUE_ID_LENGTH:
        return int(value)
    return value.upper()


def requested_expansions(params: dict) -> frozenset:
    """The C{_expansions} parameter: a list of names, or C{true} for all.

    @raise ParameterError: anything else.
    """
    value = params.get("_expansions")
    if value is None or value is False:
        return frozenset()
    if value is True:
        return EXPANSIONS
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return EXPANSIONS & frozenset(value)
    raise ParameterError("`_expansions` must be a list of names or true")


def needs(expansions: frozenset, privacy: bool) -> str | None:
    """What of the stored message answering C{expansions} takes: C{"body"},
    C{"head"} (the header section) or C{None}."""
    if not privacy and expansions & BODY_EXPANSIONS:
        return "body"
    if expansions & HEADER_EXPANSIONS:
        return "head"
    return None


def header_section(data: bytes) -> bytes:
    """The header section of stored message bytes, up to its empty line."""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[:end + 4]


def entry_status(entry) -> str:
    """Postal's name for a queue entry's status."""
    if entry.status == "queued":
        # queued again after an attempt: a temporary failure so far
        return "SoftFail" if entry.attempts else "Pending"
    return {"sent": "Sent", "failed": "HardFail", "held": "Held"}[entry.status]


def describe_message(record, expansions: frozenset, privacy: bool,
                     data: bytes | None, by_token: bool) -> dict:
    """The C{data} of C{messages/message}: the first entry of C{record}, with
    the C{expansions} asked for.

    @param data: the stored message (or its header section, or C{None}), as
        L{needs} asked for.
    @param by_token: the message was named by its token: C{recipients} lists
        every entry of it, so that a client sees all of them.
    """
    entry = record.entries[0]
    out = {"id": entry.id, "token": entry.token}
    if by_token:
        out["recipients"] = [{"id": e.id, "rcpt_to": e.rcpt_to, "status": entry_status(e)}
                             for e in record.entries]
    if "status" in expansions:
        times = [r.attempt.attempted_at for r in record.attempts
                 if r.attempt.queue_id == entry.id]
        out["status"] = {"status": entry_status(entry),
                         "last_delivery_attempt": max(times) if times else None,
                         "held": entry.status == "held", "hold_expiry": None}
    fields = None
    if expansions & HEADER_EXPANSIONS:
        fields = _fields(header_section(data or b""))
    if "details" in expansions:
        out["details"] = _details(entry, fields)
    if "headers" in expansions:
        headers: dict[str, list[str]] = {}
        for name, value in fields:
            headers.setdefault(name, []).append(_text(value))
        out["headers"] = headers
    bodies = expansions & BODY_EXPANSIONS
    if bodies:
        parts = {} if privacy else _parts(data or b"", bodies)
        for name in sorted(bodies):
            out[name] = parts.get(name)
    return out


def describe_deliveries(record) -> list:
    """The C{data} of C{messages/deliveries}: every attempt of C{record}'s
    entries, oldest first."""
    entries = {e.id: e for e in record.entries}
    # the attempt that settled a failed entry is a hard failure whatever its
    # code: a null MX, or temporary failures past max_queue_age
    last = {}
    for r in record.attempts:
        last[r.attempt.queue_id] = r.id
    answer = []
    for r in record.attempts:
        a, entry = r.attempt, entries[r.attempt.queue_id]
        if a.code is not None and 200 <= a.code < 300:
            status = "Sent"
        elif (a.code is not None and a.code >= 500) or (
                entry.status == "failed" and last[entry.id] == r.id):
            status = "HardFail"
        else:
            status = "SoftFail"
        answer.append({"id": r.id, "status": status,
                       "details": _delivery_details(status, entry.rcpt_to, a.remote_host),
                       "output": a.text, "sent_with_ssl": None, "log_id": None,
                       "time": None, "timestamp": a.attempted_at})
    return answer


def _delivery_details(status: str, rcpt: str, host: str | None) -> str:
    where = host or "no host reached"
    if status == "Sent":
        return f"Message for {rcpt} accepted by {where}"
    if status == "HardFail":
        return f"Permanent failure delivering to {rcpt} ({where})"
    return f"Temporary failure delivering to {rcpt} ({where}); it will be retried"


def _fields(section: bytes) -> list[tuple[str, str]]:
    try:
        return parse_fields(section)
    except MalformedHeaderSection:
        # stored messages passed the same parser; a row written otherwise
        # shows no headers rather than failing the request
        return []


def _text(value: str) -> str:
    """A header value as JSON can carry it: a stray byte kept by
    C{surrogateescape} becomes U+FFFD."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _first(fields, name: str) -> str | None:
    for field, value in fields:
        if field == name:
            return _text(value)
    return None


def _details(entry, fields) -> dict:
    subject = _first(fields, "subject")
    if subject is not None:
        try:
            subject = str(make_header(decode_header(subject)))
        except (LookupError, UnicodeError, ValueError, email.errors.HeaderParseError):
            pass  # an encoded word that does not decode: shown as written
    message_id = _first(fields, "message-id")
    if message_id is not None:
        message_id = message_id.strip().strip("<>").strip() or None
    return {"rcpt_to": entry.rcpt_to, "mail_from": entry.mail_from, "subject": subject,
            "message_id": message_id, "timestamp": entry.created_at,
            "direction": "outgoing", "size": f"{entry.size / 1024:.2f}", "bounce": False,
            "bounce_for_id": 0, "tag": None, "received_with_ssl": None}


def _parts(data: bytes, wanted: frozenset) -> dict:
    """The body expansions in C{wanted}, from the whole stored message."""
    out = {}
    if "raw_message" in wanted:
        out["raw_message"] = base64.b64encode(data).decode("ascii")
    if not wanted & {"plain_body", "html_body", "attachments"}:
        return out
    message = email.message_from_bytes(data, policy=email.policy.default)
    plain = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    out["plain_body"] = None if plain is None else _decoded(plain)
    out["html_body"] = None if html is None else _decoded(html)
    out["attachments"] = [_attachment(p) for p in _leaves(message)
                          if p is not plain and p is not html and _is_attachment(p)]
    return out


def _leaves(part):
    if part.get_content_maintype() == "multipart":
        for sub in part.iter_parts():
            yield from _leaves(sub)
    else:
        yield part


def _is_attachment(part) -> bool:
    return (part.is_attachment() or part.get_filename() is not None
            or part.get_content_maintype() != "text")


def _decoded(part) -> str:
    """A text part's content; its line ends as the client wrote them in the
    API (LF), not as the stored message has them (CRLF)."""
    try:
        text = part.get_content()
    except (LookupError, UnicodeError, ValueError):
        # an unknown charset: the bytes as UTF-8, what cannot be read replaced
        text = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
    return text.replace("\r\n", "\n")


def _payload(part) -> bytes:
    data = part.get_payload(decode=True)
    if data is None:  # an attached message: its payload is the message itself
        inner = part.get_payload()
        data = inner[0].as_bytes() if isinstance(inner, list) and inner else b""
    return data


def _attachment(part) -> dict:
    data = _payload(part)
    return {"filename": part.get_filename(), "content_type": part.get_content_type(),
            "data": base64.b64encode(data).decode("ascii"), "size": len(data),
            "hash": hashlib.sha1(data).hexdigest()}
