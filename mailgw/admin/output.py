"""What the command line prints: model values as JSON-ready dicts, and the
readable forms (aligned tables, ``key: value`` lines) of those same dicts.

Both forms come from one dict per value, so ``--json`` and the readable output
never disagree about what a field is called or holds. Readable output escapes
control characters: queue fields and headers come from strangers on the
internet and must not drive the operator's terminal.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, UTC

from mailgw.model import (
    Credential, DeliveryAttempt, DKIMKey, Domain, Organization, QueueEntry, Server,
)


@dataclass(frozen=True)
class Output:
    """One command's result: C{data} for C{--json}, C{text} for people, or
    C{raw} bytes written as they are."""
    data: object = None
    text: str = ""
    raw: bytes | None = None


def iso8601(ts: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC string (C{None} stays C{None})."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def organization_json(org: Organization) -> dict:
    return {"id": org.id, "permalink": org.permalink, "name": org.name,
            "suspended": org.suspended}


def server_json(server: Server) -> dict:
    return {
        "id": server.id, "server": server.full_name,
        "organization": server.organization_permalink,
        "permalink": server.permalink, "name": server.name, "mode": server.mode,
        "allow_sender_header": server.allow_sender_header,
        "privacy_mode": server.privacy_mode, "send_limit": server.send_limit,
        "suspended": server.suspended,
        "organization_suspended": server.organization_suspended,
    }


def domain_json(domain: Domain) -> dict:
    return {
        "id": domain.id, "name": domain.name, "owner": domain.owner,
        "server": domain.owner if domain.server_id is not None else None,
        "organization": domain.owner if domain.organization_id is not None else None,
        "verified": domain.verified, "use_for_any": domain.use_for_any,
        "dns_status": domain.dns_status, "dns_checked_at": iso8601(domain.dns_checked_at),
    }


def dkim_key_json(key: DKIMKey) -> dict:
    """A DKIM key and its record, never its private key."""
    from mailgw.domains.dkim import dns_value
    return {
        "domain": key.domain, "selector": key.selector, "algorithm": key.algorithm,
        "retiring": key.retiring, "created_at": iso8601(key.created_at),
        "name": key.dns_name, "type": "TXT", "value": dns_value(key.private_key),
    }


def dns_records_text(records: list[dict]) -> str:
    """The records of C{mailgw domain dns} in zone-file form: each after a
    comment saying what it is for; TXT data as quoted character-strings of
    at most 255 bytes (RFC 1035 sections 3.3 and 5.1)."""
    from mailgw.domains.dkim import zone_text
    lines = []
    for record in records:
        note = _PURPOSES[record["purpose"]]
        if record["purpose"] == "dkim":
            state = "retiring: keep it until the rotation is finished" \
                if record["retiring"] else "active"
            note = f"{note}, selector {record['selector']} ({state})"
        data = zone_text(record["value"]) if record["type"] == "TXT" \
            else record["value"] + "."
        lines += [f"; {note}", f"{record['name']}.  IN  {record['type']}  {data}"]
    return "\n".join(lines)


_PURPOSES = {"verification": "ownership (mailgw verifies the domain by this record)",
             "spf": "SPF (RFC 7208)", "dkim": "DKIM key (RFC 6376)",
             "return_path": "return path (bounces come back through it)"}


def credential_json(credential: Credential, server: str) -> dict:
    """@param server: the owning server's full name, C{org/server}."""
    return {
        "id": credential.id, "server": server, "type": credential.type,
        "name": credential.name, "key": credential.key, "hold": credential.hold,
        "last_used_at": iso8601(credential.last_used_at),
    }


def entry_json(entry: QueueEntry) -> dict:
    return {
        "id": entry.id, "token": entry.token, "message_id": entry.message_id,
        "server": entry.server, "credential_id": entry.credential_id,
        "mail_from": entry.mail_from, "rcpt_to": entry.rcpt_to,
        "status": entry.status, "hold_reason": entry.hold_reason,
        "size": entry.size, "domain": entry.domain,
        "created_at": iso8601(entry.created_at), "attempts": entry.attempts,
        "next_attempt_at": iso8601(entry.next_attempt_at),
        "last_error": entry.last_error,
    }


def message_json(entry: QueueEntry) -> dict:
    """The fields of an entry that belong to its message (every entry of a
    message has the same), for C{queue show QUEUE-ID}."""
    return {
        "token": entry.token, "message_id": entry.message_id, "server": entry.server,
        "credential_id": entry.credential_id, "mail_from": entry.mail_from,
        "size": entry.size, "domain": entry.domain,
        "created_at": iso8601(entry.created_at),
    }


def count(number: int, thing: str, things: str | None = None) -> str:
    """C{"1 queue entry"}, C{"2 queue entries"}."""
    return f"{number} {thing if number == 1 else things or thing + 's'}"


def attempt_json(attempt: DeliveryAttempt) -> dict:
    return {
        "attempted_at": iso8601(attempt.attempted_at), "node": attempt.node,
        "remote_host": attempt.remote_host, "code": attempt.code, "text": attempt.text,
    }


def lockout_json(lockout) -> dict:
    """@param lockout: a L{mailgw.store.base.Lockout}."""
    return {"address": lockout.address, "kind": lockout.kind, "node": lockout.node,
            "locked_until": iso8601(lockout.locked_until), "failures": lockout.failures}


def listener_json(listener) -> dict:
    """@param listener: a L{mailgw.config.ListenerConfig}."""
    return {"endpoint": listener.endpoint, "tls": listener.tls,
            "auth_requires_tls": listener.requires_tls_for_auth,
            "proxy_protocol": listener.proxy_protocol,
            "max_connections": listener.max_connections,
            "max_connections_per_ip": listener.max_connections_per_ip}


def relay_json(relay) -> dict:
    """Where the relay delivers (never its password).

    @param relay: a L{mailgw.config.RelayConfig}.
    """
    if not relay.enabled:
        return {"enabled": False, "target": None}
    if relay.smarthost:
        return {"enabled": True, "target": "smarthost", "smarthost": relay.smarthost,
                "tls": relay.tls, "verify": relay.verify,
                "username": relay.username or None}
    return {"enabled": True, "target": "mx", "mx_port": relay.mx_port,
            "resolver": relay.resolver or None}


def relay_text(relay: dict) -> str:
    """L{relay_json}'s answer, readable."""
    if not relay["enabled"]:
        return "off (relay.enabled = false): accepted mail stays in the queue"
    if relay["target"] == "smarthost":
        details = [f"tls {relay['tls']}",
                   "certificate verified" if relay["verify"] else "certificate NOT verified"]
        if relay["username"]:
            details.append(f"AUTH as {relay['username']}")
        return f"smarthost {relay['smarthost']} ({', '.join(details)})"
    resolver = relay["resolver"] or "the system's resolver"
    return (f"the recipients' MX hosts, port {relay['mx_port']} (STARTTLS when offered; "
            f"DNS: {resolver})")


#: the most of a message searched for (and shown as) its header section, so
#: that a message without an empty line is not printed whole
HEADER_LIMIT = 256 * 1024


def message_headers(body: bytes) -> bytes:
    """The header section of a message: everything before the first empty
    line (CRLF or bare LF endings), or the first L{HEADER_LIMIT} bytes when
    there is none."""
    head = body[:HEADER_LIMIT]
    ends = [i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0]
    return head[:min(ends)] if ends else head


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """C{text} with control characters (other than tab and newline) shown as
    escapes, so that printing it cannot move the cursor or change colours."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return printable(str(value)).replace("\n", "\\n")


def fields(data: dict) -> str:
    """C{key: value} lines, values aligned."""
    width = max(len(k) for k in data) + 1
    return "\n".join(f"{k + ':':<{width}} {cell(v)}" for k, v in data.items())


def table(columns: list[tuple[str, str]], rows: list[dict], empty: str) -> str:
    """Aligned columns: C{columns} are C{(heading, key)} pairs; C{empty} is
    what to say when there is no row."""
    if not rows:
        return empty
    lines = [[h for h, _ in columns]] + [[cell(r[k]) for _, k in columns] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


#: C{domain check}: the expected value is what to publish when not OK
CHECK_COLUMNS = [("RECORD", "purpose"), ("NAME", "name"), ("TYPE", "type"),
                 ("STATUS", "status"), ("EXPECTED", "expected")]
ORGANIZATION_COLUMNS = [("PERMALINK", "permalink"), ("NAME", "name"),
                        ("SUSPENDED", "suspended")]
SERVER_COLUMNS = [
    ("SERVER", "server"), ("NAME", "name"), ("MODE", "mode"),
    ("SENDER HEADER", "allow_sender_header"), ("PRIVACY", "privacy_mode"),
    ("SEND LIMIT", "send_limit"), ("SUSPENDED", "suspended"),
    ("ORG SUSPENDED", "organization_suspended"),
]
DOMAIN_COLUMNS = [("ID", "id"), ("NAME", "name"), ("OWNER", "owner"),
                  ("VERIFIED", "verified"), ("USE FOR ANY", "use_for_any"),
                  ("DNS", "dns_status"), ("DNS CHECKED", "dns_checked_at")]
CREDENTIAL_COLUMNS = [("ID", "id"), ("TYPE", "type"), ("NAME", "name"),
                      ("HOLD", "hold"), ("KEY", "key"), ("LAST USED", "last_used_at")]
ENTRY_COLUMNS = [
    ("ID", "id"), ("TOKEN", "token"), ("SERVER", "server"), ("STATUS", "status"),
    ("FROM", "mail_from"), ("TO", "rcpt_to"), ("SIZE", "size"),
    ("CREATED", "created_at"),
]
#: a message's entries, under its own fields (C{queue show QUEUE-ID})
MESSAGE_ENTRY_COLUMNS = [
    ("ID", "id"), ("TO", "rcpt_to"), ("STATUS", "status"), ("HOLD REASON", "hold_reason"),
    ("ATTEMPTS", "attempts"), ("NEXT ATTEMPT", "next_attempt_at"),
    ("LAST ERROR", "last_error"),
]
ATTEMPT_COLUMNS = [("WHEN", "attempted_at"), ("REMOTE HOST", "remote_host"),
                   ("CODE", "code"), ("TEXT", "text")]
LOCKOUT_COLUMNS = [("ADDRESS", "address"), ("KIND", "kind"), ("NODE", "node"),
                   ("UNTIL", "locked_until"), ("FAILURES", "failures")]
LISTENER_COLUMNS = [("ENDPOINT", "endpoint"), ("TLS", "tls"),
                    ("AUTH REQUIRES TLS", "auth_requires_tls"),
                    ("PROXY PROTOCOL", "proxy_protocol"),
                    ("MAX CONNECTIONS", "max_connections"),
                    ("PER IP", "max_connections_per_ip")]
