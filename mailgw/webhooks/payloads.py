"""Postal's webhook events and their payloads (docs/webhooks.md).

Everything here is pure (stdlib only, no reactor, no store): the store calls
it inside the transaction that changes a queue entry, so that the event is
written to the outbox with the change or not at all.

A message, as Postal describes it in a payload, is one queue entry (one
recipient): C{id} is the entry's id and C{token} its message's queue id, as
the message API (C{/api/v1/messages/message}) names them.
"""
from __future__ import annotations

import email.errors
import email.parser
import email.policy
import json
import uuid as uuidlib
from email.header import decode_header, make_header

#: the events a webhook may ask for, with Postal's names. Postal's
#: MessageLinkClicked and MessageLoaded need click and open tracking, which a
#: submission gateway does not do. DomainDNSError comes from the gateway's
#: periodic DNS checks (as Postal's from its scheduled ones), not from
#: C{mailgw domain check}, the operator's own look.
EVENTS = ("MessageSent", "MessageDelayed", "MessageDeliveryFailed", "MessageHeld",
          "MessageBounced", "DomainDNSError")

#: Postal's delivery status of each delivery event
DELIVERY_STATUS = {"MessageSent": "Sent", "MessageDelayed": "SoftFail",
                   "MessageDeliveryFailed": "HardFail", "MessageHeld": "Held"}

#: Postal truncates a delivery's output to this many characters
OUTPUT_LIMIT = 512

#: the largest header section read for a message's subject and Message-ID
HEAD_LIMIT = 64 * 1024

#: how a hold reason of the submission core reads in a MessageHeld payload
HOLD_DETAILS = {
    "credential on hold": "Credential is configured to hold all messages authenticated by it.",
    "server in development mode": "Server is in development mode.",
    "send limit reached": "Message held because send limit has been reached.",
}


def header_facts(head: bytes | None) -> tuple[str | None, str | None]:
    """The C{Subject} (its encoded words decoded, RFC 2047) and the
    C{Message-ID} (without its angle brackets) of a stored message, from its
    first bytes.

    @param head: the stored message's first bytes (its first chunk), or C{None}.
    @return: C{(subject, message_id)}, either C{None} when absent.
    """
    if not head:
        return None, None
    end = head.find(b"\r\n\r\n")
    section = head[:HEAD_LIMIT] if end < 0 else head[:min(end + 4, HEAD_LIMIT)]
    try:
        fields = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
            section)
    except (email.errors.MessageError, ValueError):
        return None, None
    subject, message_id = fields.get("Subject"), fields.get("Message-ID")
    if subject is not None:
        subject = _text(subject)
        try:
            subject = str(make_header(decode_header(subject)))
        except (LookupError, UnicodeError, ValueError, email.errors.HeaderParseError):
            pass  # an encoded word that does not decode: given as written
        subject = " ".join(subject.split())
    if message_id is not None:
        message_id = _text(message_id).strip().strip("<>").strip() or None
    return subject, message_id


def _text(value) -> str:
    """A header value as JSON carries it: stray bytes become U+FFFD."""
    if not isinstance(value, str):  # compat32 gives a Header for undecodable bytes
        value = str(value)
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def message_hash(entry, subject: str | None, message_id: str | None) -> dict:
    """Postal's C{message} object of a payload, for one queue entry.

    @param entry: a L{mailgw.model.QueueEntry}.
    """
    return {"id": entry.id, "token": entry.token, "direction": "outgoing",
            "message_id": message_id, "to": entry.rcpt_to, "from": entry.mail_from,
            "subject": subject, "timestamp": entry.created_at,
            "spam_status": "NotChecked", "tag": None}


def delivery_details(event: str, entry, host: str | None, *, retry_at: float | None = None,
                     hold_reason: str | None = None) -> str:
    """The human C{details} of a delivery payload, worded as the message
    API's deliveries are (L{mailgw.web.messages})."""
    where = host or "no host reached"
    if event == "MessageSent":
        return f"Message for {entry.rcpt_to} accepted by {where}"
    if event == "MessageDelayed":
        return (f"Temporary failure delivering to {entry.rcpt_to} ({where}); it will be "
                "retried" + ("" if retry_at is None else f" at {retry_at:.0f}"))
    if event == "MessageDeliveryFailed":
        return f"Permanent failure delivering to {entry.rcpt_to} ({where})"
    return HOLD_DETAILS.get(hold_reason or "", f"Message held: {hold_reason}")


def delivery_payload(event: str, message: dict, *, details: str, output: str | None,
                     timestamp: float, sent_with_ssl: bool | None = None,
                     time: float | None = None) -> dict:
    """The payload of MessageSent, MessageDelayed, MessageDeliveryFailed and
    MessageHeld, in Postal's shape: the message, the delivery's status,
    details and SMTP output (truncated as Postal does), and when."""
    return {"message": message, "status": DELIVERY_STATUS[event], "details": details,
            "output": (output or "")[:OUTPUT_LIMIT], "sent_with_ssl": sent_with_ssl,
            "timestamp": timestamp, "time": time}


def bounce_payload(original: dict, bounce: dict) -> dict:
    """The payload of MessageBounced: the message that could not be
    delivered and the bounce (RFC 3464 report) sent to its sender."""
    return {"original_message": original, "bounce": bounce}


def request_body(event: str, timestamp: float, payload: dict, uuid: str) -> bytes:
    """The bytes a request carries (and that are signed): Postal's
    C{{"event", "timestamp", "payload", "uuid"}} as JSON.

    @param timestamp: when the event happened (the outbox row's creation),
        the same in every retry.
    """
    return json.dumps({"event": event, "timestamp": timestamp, "payload": payload,
                       "uuid": uuid}, separators=(",", ":"), ensure_ascii=False).encode()


#: a namespace for the uuids of things that have none of their own (servers
#: and domains): the same on every node, as the ids they are made from
_UUIDS = uuidlib.UUID("6f0b1c3e-5d2a-4c87-9e61-3b8f2a7d4c10")


def stable_uuid(kind: str, ident: int) -> str:
    """A uuid for C{kind} number C{ident} (RFC 4122 version 5): Postal's
    payloads name servers and domains by uuid, which mailgw does not keep."""
    return str(uuidlib.uuid5(_UUIDS, f"{kind}:{ident}"))


def _worst(rows, purpose):
    """C{(status, error)} of the records of C{purpose}: the worst of them,
    and what is wrong with it (C{None} when all are OK); C{(None, None)}
    when none was checked (no return path configured)."""
    order = ("OK", "Missing", "Invalid")
    found = [r for r in rows if r["purpose"] == purpose]
    if not found:
        return None, None
    worst = max(found, key=lambda r: order.index(r["status"]) if r["status"] in order else 3)
    if worst["status"] == "OK":
        return "OK", None
    error = f"{worst['name']}: {worst['status']}; expected {worst['expected']}"
    if worst["found"]:
        error += f"; found {', '.join(str(f) for f in worst['found'])}"
    return worst["status"], error


def dns_ok(rows) -> bool:
    """Postal's rule for a domain's DNS: SPF and DKIM OK, the MX and return
    path records OK or missing.

    @param rows: a DNS check's records (L{mailgw.domains.monitor.row}).
    """
    status = {p: _worst(rows, p)[0] for p in ("spf", "dkim", "mx", "return_path")}
    return (status["spf"] == "OK" and status["dkim"] == "OK"
            and status["mx"] in ("OK", "Missing", None)
            and status["return_path"] in ("OK", "Missing", None))


def dns_error_payload(server, domain, checked_at: float, rows) -> dict:
    """The payload of DomainDNSError, in Postal's shape.

    @param server: the L{mailgw.model.Server} owning the domain.
    @param domain: the L{mailgw.model.Domain}.
    """
    payload = {"server": {"uuid": stable_uuid("server", server.id), "name": server.name,
                          "permalink": server.permalink,
                          "organization": server.organization_permalink},
               "domain": domain.name, "uuid": stable_uuid("domain", domain.id),
               "dns_checked_at": checked_at}
    for purpose in ("spf", "dkim", "mx", "return_path"):
        status, error = _worst(rows, purpose)
        payload[f"{purpose}_status"], payload[f"{purpose}_error"] = status, error
    return payload
