"""The store's logic, written once for every engine.

Each operation is a generator function: it yields L{Q} statements (portable
SQL with C{?} placeholders) and receives their rows back. An engine runs the
whole generator inside one transaction: SQLite on its writer thread, PostgreSQL
on a txpostgres connection, each statement a Deferred. The generator's return
value is the operation's result; an exception rolls the transaction back.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import io
import ipaddress
from dataclasses import dataclass
from importlib import resources

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from mailgw.address import normalise_domain
from mailgw.domains import dkim
from mailgw.interfaces import Conflict, IStore, NotFound
from mailgw.model import (
    SERVER_MODES, Claim, Credential, DeliveryAttempt, DKIMKey, Domain, Organization,
    QueueEntry, Server, generate_key,
)

log = Logger()

#: characters of a domain's verification token
VERIFICATION_TOKEN_LENGTH = 24

#: bodies are stored in pieces of this size, so that no step holds a whole
#: large message in memory
CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Q:
    """One statement of a transaction."""
    sql: str
    params: tuple = ()


@dataclass(frozen=True)
class InsertOne(Q):
    """An C{INSERT} of one row into a table whose C{id} is its row id,
    ending in C{RETURNING id}; its answer is C{[(id,)]}. SQLite runs it
    without the clause and reads the connection's last row id: a
    C{RETURNING} costs SQLite a temporary table per statement."""


def split_placeholders(sql: str) -> list[str]:
    """The text of C{sql} between its C{?} placeholders (one more piece than
    placeholders); a C{?} inside a quoted literal, a quoted identifier or a
    C{--} comment is text. Each engine joins the pieces with its own marks."""
    pieces, current, quote, i, n = [], [], None, 0, len(sql)
    while i < n:
        ch = sql[i]
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            current.append(sql[i:end])
            i = end
            continue
        elif ch == "?":
            pieces.append("".join(current))
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1
    pieces.append("".join(current))
    return pieces


def key_digest(key: str) -> str:
    """What credentials are looked up by: the key itself never meets an index."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@functools.cache
def schema_files(engine: str) -> tuple[tuple[int, str], ...]:
    """The (version, SQL text) pairs shipped for C{engine}, in order; read
    once (the gateway reads them before twistd drops privileges)."""
    folder = resources.files("mailgw.store") / "schema" / engine
    found = []
    for item in folder.iterdir():
        name = item.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), item.read_text(encoding="utf-8")))
    return tuple(sorted(found))


def split_statements(sql: str) -> list[str]:
    """Statements of a schema file: split at semicolons that end a line."""
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    parts, current = [], []
    for line in lines:
        current.append(line)
        if line.rstrip().endswith(";"):
            parts.append("\n".join(current).strip().rstrip(";"))
            current = []
    tail = "\n".join(current).strip()
    if tail:
        parts.append(tail)
    return [p for p in parts if p]


_SERVER_COLUMNS = (
    "s.id, s.organization_id, o.permalink, s.permalink, s.name, "
    "s.allow_sender_header, s.privacy_mode, s.mode, s.suspended, o.suspended, "
    "s.send_limit")
_SERVER_FROM = "servers s JOIN organizations o ON o.id = s.organization_id"
_SERVER_JOIN = ("JOIN servers s ON s.id = c.server_id "
                "JOIN organizations o ON o.id = s.organization_id")
_CREDENTIAL_COLUMNS = "c.id, c.server_id, c.type, c.key, c.name, c.hold, c.last_used_at"
_QUEUE_SELECT = (
    "SELECT q.id, q.message_id, m.token, o.permalink || '/' || s.permalink, "
    "m.server_id, m.credential_id, m.mail_from, q.rcpt_to, q.status, m.size, "
    "m.sender_domain, q.created_at, q.hold_reason, q.attempts, q.next_attempt_at, "
    "q.last_error FROM queue q JOIN messages m ON m.id = q.message_id "
    "JOIN servers s ON s.id = m.server_id "
    "JOIN organizations o ON o.id = s.organization_id")


def _server(row) -> Server:
    return Server(
        id=row[0], organization_id=row[1], organization_permalink=row[2],
        permalink=row[3], name=row[4], allow_sender_header=bool(row[5]),
        privacy_mode=bool(row[6]), mode=row[7], suspended=bool(row[8]),
        organization_suspended=bool(row[9]), send_limit=row[10])


def _credential(row) -> Credential:
    return Credential(id=row[0], server_id=row[1], type=row[2], key=row[3],
                      name=row[4], hold=bool(row[5]), last_used_at=row[6])


def _organization(row) -> Organization:
    return Organization(id=row[0], permalink=row[1], name=row[2],
                        suspended=bool(row[3]))


def _domain(row) -> Domain:
    return Domain(id=row[0], name=row[1], server_id=row[2], organization_id=row[3],
                  verified=bool(row[4]), use_for_any=bool(row[5]), owner=row[6],
                  dns_checked_at=row[7], dns_status=row[8])


def _entry(row) -> QueueEntry:
    return QueueEntry(
        id=row[0], message_id=row[1], token=row[2], server=row[3], server_id=row[4],
        credential_id=row[5], mail_from=row[6], rcpt_to=row[7], status=row[8],
        size=row[9], domain=row[10], created_at=row[11], hold_reason=row[12],
        attempts=row[13], next_attempt_at=row[14], last_error=row[15])


def most_specific_network(address: str, candidates):
    """Of C{(network text, value)} pairs, the value whose network holds
    C{address} with the longest prefix (IPv4 networks also hold IPv4-mapped
    IPv6 addresses); C{None} when none does."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    best, best_len = None, -1
    for text, value in candidates:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if network.version == ip.version and ip in network and network.prefixlen > best_len:
            best, best_len = value, network.prefixlen
    return best


# -- the directory (hot path) ---------------------------------------------

def _credential_by_key(key, type):
    rows = yield Q(
        f"SELECT {_CREDENTIAL_COLUMNS}, {_SERVER_COLUMNS} FROM credentials c "
        f"{_SERVER_JOIN} "
        "WHERE c.key_digest = ? AND c.type = ?", (key_digest(key), type))
    if not rows:
        return None
    credential = _credential(rows[0][:7])
    if not hmac.compare_digest(credential.key.encode(), key.encode()):
        return None
    return credential, _server(rows[0][7:])


def _credential_by_id(credential_id):
    rows = yield Q(
        f"SELECT {_CREDENTIAL_COLUMNS}, {_SERVER_COLUMNS} FROM credentials c "
        f"{_SERVER_JOIN} WHERE c.id = ?", (credential_id,))
    if not rows:
        return None
    return _credential(rows[0][:7]), _server(rows[0][7:])


def _credentials_of_server(organization, server, type):
    found = yield from _find_server(organization, server)
    if found is None:
        return None
    rows = yield Q(f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials c "
                   "WHERE c.server_id = ? AND c.type = ? ORDER BY c.id",
                   (found.id, type))
    return found, [_credential(r) for r in rows]


def _ip_credentials():
    rows = yield Q(
        f"SELECT {_CREDENTIAL_COLUMNS}, {_SERVER_COLUMNS} FROM credentials c "
        f"{_SERVER_JOIN} WHERE c.type = 'smtp-ip'")
    return [(_credential(r[:7]), _server(r[7:])) for r in rows]


def _find_server(organization, permalink):
    rows = yield Q(f"SELECT {_SERVER_COLUMNS} FROM {_SERVER_FROM} "
                   "WHERE o.permalink = ? AND s.permalink = ?",
                   (organization, permalink))
    return _server(rows[0]) if rows else None


def _server_by_id(server_id):
    rows = yield Q(f"SELECT {_SERVER_COLUMNS} FROM {_SERVER_FROM} WHERE s.id = ?",
                   (server_id,))
    return _server(rows[0]) if rows else None


def _authorised_domains(server_id):
    rows = yield Q(
        "SELECT d.name, d.use_for_any, d.server_id FROM domains d "
        "WHERE d.verified = ? AND (d.server_id = ? OR d.organization_id = "
        "(SELECT organization_id FROM servers WHERE id = ?))",
        (True, server_id, server_id))
    names = frozenset(r[0] for r in rows)
    # The first by name, so that the choice is stable when there are several.
    any_domain = min((r[0] for r in rows if r[1] and r[2] == server_id), default=None)
    return names, any_domain


def _touch_credential(credential_id, when):
    yield Q("UPDATE credentials SET last_used_at = ? WHERE id = ?",
            (when, credential_id))


def _messages_since(server_id, since):
    rows = yield Q("SELECT count(*) FROM messages WHERE server_id = ? AND created_at >= ?",
                   (server_id, since))
    return rows[0][0]


# -- the queue ----------------------------------------------------------------

def _enqueue(envelope, body, now):
    size = body.seek(0, io.SEEK_END)
    body.seek(0)
    rows = yield InsertOne(
        "INSERT INTO messages (token, server_id, credential_id, mail_from, "
        "sender_domain, protocol, size, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "RETURNING id",
        (envelope.token, envelope.server_id, envelope.credential_id,
         envelope.mail_from, envelope.sender_domain, envelope.protocol, size, now))
    message_id = rows[0][0]
    seq = 0
    while chunk := body.read(CHUNK_SIZE):
        yield Q("INSERT INTO message_chunks (message_id, seq, data) VALUES (?, ?, ?)",
                (message_id, seq, chunk))
        seq += 1
    ids = {}
    for rcpt in envelope.rcpt_to:
        rows = yield InsertOne(
            "INSERT INTO queue (message_id, rcpt_to, status, hold_reason, "
            "next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "RETURNING id",
            (message_id, rcpt, envelope.status, envelope.hold_reason, now, now, now))
        ids[rcpt] = rows[0][0]
    if envelope.status == "held":
        yield from _webhooks.held_events(list(ids.values()), envelope.hold_reason, now)
    return ids


def _list_entries(status, server, limit, newest_first=False):
    where, params = [], []
    if status is not None:
        where.append("q.status = ?")
        params.append(status)
    if server is not None:
        org, _, srv = server.partition("/")
        where.append("o.permalink = ? AND s.permalink = ?")
        params += [org, srv]
    sql = _QUEUE_SELECT + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY q.id DESC" if newest_first else " ORDER BY q.id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    rows = yield Q(sql, tuple(params))
    return [_entry(r) for r in rows]


def _get_entry(entry_id):
    rows = yield Q(_QUEUE_SELECT + " WHERE q.id = ?", (entry_id,))
    if not rows:
        raise NotFound(f"no queue entry {entry_id}")
    return _entry(rows[0])


def _queue_counts():
    rows = yield Q("SELECT status, count(*) FROM queue GROUP BY status")
    return dict(rows)


def _ping():
    yield Q("SELECT 1")


def _read_body(message_id):
    rows = yield Q("SELECT data FROM message_chunks WHERE message_id = ? ORDER BY seq",
                   (message_id,))
    return b"".join(bytes(r[0]) for r in rows)


# -- administration --------------------------------------------------------------

def _require_server(organization, permalink):
    found = yield from _find_server(organization, permalink)
    if found is None:
        raise NotFound(f"no server {organization}/{permalink}")
    return found


def _require_organization(permalink):
    rows = yield Q("SELECT id, permalink, name, suspended FROM organizations "
                   "WHERE permalink = ?", (permalink,))
    if not rows:
        raise NotFound(f"no organization {permalink}")
    return _organization(rows[0])


def _add_organization(permalink, name, now):
    rows = yield Q("SELECT 1 FROM organizations WHERE permalink = ?", (permalink,))
    if rows:
        raise Conflict(f"organization {permalink} already exists")
    rows = yield Q("INSERT INTO organizations (permalink, name, suspended, created_at) "
                   "VALUES (?, ?, ?, ?) RETURNING id, permalink, name, suspended",
                   (permalink, name, False, now))
    return _organization(rows[0])


def _list_organizations():
    rows = yield Q("SELECT id, permalink, name, suspended FROM organizations ORDER BY permalink")
    return [_organization(r) for r in rows]


def _set_organization_suspended(permalink, suspended):
    org = yield from _require_organization(permalink)
    yield Q("UPDATE organizations SET suspended = ? WHERE id = ?", (suspended, org.id))
    return (yield from _require_organization(permalink))


_SERVER_FLAGS = ("allow_sender_header", "privacy_mode", "mode", "send_limit", "suspended")


def _add_server(organization, permalink, name, flags, now):
    org = yield from _require_organization(organization)
    existing = yield from _find_server(organization, permalink)
    if existing is not None:
        raise Conflict(f"server {organization}/{permalink} already exists")
    yield Q("INSERT INTO servers (organization_id, permalink, name, allow_sender_header, "
            "privacy_mode, mode, suspended, send_limit, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (org.id, permalink, name, bool(flags.get("allow_sender_header", False)),
             bool(flags.get("privacy_mode", False)), flags.get("mode", "live"),
             bool(flags.get("suspended", False)), flags.get("send_limit"), now))
    return (yield from _require_server(organization, permalink))


def _server_flag(column, value):
    """A setting's value in the one type both engines store it as."""
    if column == "mode":
        if value not in SERVER_MODES:
            raise ValueError(f"mode must be one of {', '.join(SERVER_MODES)}")
        return value
    if column == "send_limit":
        return None if value is None else int(value)
    return bool(value)


def _update_server(organization, permalink, changes):
    server = yield from _require_server(organization, permalink)
    for column, value in changes.items():
        if column not in _SERVER_FLAGS:
            raise ValueError(f"not a server setting: {column}")
        yield Q(f"UPDATE servers SET {column} = ? WHERE id = ?",
                (_server_flag(column, value), server.id))
    return (yield from _require_server(organization, permalink))


def _list_servers(organization):
    sql = f"SELECT {_SERVER_COLUMNS} FROM {_SERVER_FROM}"
    params = ()
    if organization is not None:
        yield from _require_organization(organization)
        sql += " WHERE o.permalink = ?"
        params = (organization,)
    rows = yield Q(sql + " ORDER BY o.permalink, s.permalink", params)
    return [_server(r) for r in rows]


_DOMAIN_SELECT = (
    "SELECT d.id, d.name, d.server_id, d.organization_id, d.verified, d.use_for_any, "
    "CASE WHEN d.server_id IS NULL THEN o.permalink "
    "ELSE so.permalink || '/' || s.permalink END, d.dns_checked_at, d.dns_status "
    "FROM domains d LEFT JOIN organizations o ON o.id = d.organization_id "
    "LEFT JOIN servers s ON s.id = d.server_id "
    "LEFT JOIN organizations so ON so.id = s.organization_id")


def _add_domain(name, server, organization, verified, use_for_any, now, token, key):
    """@param token: the domain's verification token.
    @param key: its first DKIM key, C{(selector, algorithm, private key PEM)}."""
    normal = normalise_domain(name)
    if normal is None:
        raise ValueError(f"not a valid domain name: {name!r}")
    if (server is None) == (organization is None):
        raise ValueError("a domain is owned by a server or by an organization")
    if server is not None:
        owner = yield from _require_server(*server)
        column, owner_id = "server_id", owner.id
    else:
        if use_for_any:
            raise ValueError("use_for_any applies only to a server's domain")
        owner = yield from _require_organization(organization)
        column, owner_id = "organization_id", owner.id
    rows = yield Q(f"SELECT 1 FROM domains WHERE name = ? AND {column} = ?",
                   (normal, owner_id))
    if rows:
        raise Conflict(f"domain {normal} already exists for that owner")
    rows = yield Q(f"INSERT INTO domains (name, {column}, verified, use_for_any, created_at, "
                   "verification_token) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                   (normal, owner_id, bool(verified), bool(use_for_any), now, token))
    yield from _insert_dkim_key(rows[0][0], key, now)
    return (yield from _get_domain(rows[0][0]))


def _get_domain(domain_id):
    rows = yield Q(_DOMAIN_SELECT + " WHERE d.id = ?", (domain_id,))
    if not rows:
        raise NotFound(f"no domain {domain_id}")
    return _domain(rows[0])


def _list_domains(server, organization):
    sql, params = _DOMAIN_SELECT, ()
    if server is not None:
        owner = yield from _require_server(*server)
        sql += " WHERE d.server_id = ?"
        params = (owner.id,)
    elif organization is not None:
        org = yield from _require_organization(organization)
        sql += " WHERE d.organization_id = ?"
        params = (org.id,)
    rows = yield Q(sql + " ORDER BY d.name, d.id", params)
    return [_domain(r) for r in rows]


def _set_domain_verified(domain_id, verified):
    yield from _get_domain(domain_id)
    yield Q("UPDATE domains SET verified = ? WHERE id = ?", (bool(verified), domain_id))
    return (yield from _get_domain(domain_id))


def _remove_domain(domain_id):
    yield from _get_domain(domain_id)
    yield Q("DELETE FROM domains WHERE id = ?", (domain_id,))


def _add_credential(server, type, key, name, hold, now):
    owner = yield from _require_server(*server)
    rows = yield Q("SELECT 1 FROM credentials WHERE key_digest = ?", (key_digest(key),))
    if rows:
        raise Conflict("a credential with that key already exists")
    rows = yield Q("INSERT INTO credentials (server_id, type, key, key_digest, name, hold, "
                   "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                   (owner.id, type, key, key_digest(key), name, bool(hold), now))
    return (yield from _get_credential(rows[0][0]))


def _get_credential(credential_id):
    rows = yield Q(f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials c WHERE c.id = ?",
                   (credential_id,))
    if not rows:
        raise NotFound(f"no credential {credential_id}")
    return _credential(rows[0])


def _list_credentials(server):
    owner = yield from _require_server(*server)
    rows = yield Q(f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials c "
                   "WHERE c.server_id = ? ORDER BY c.id", (owner.id,))
    return [_credential(r) for r in rows]


def _set_credential_hold(credential_id, hold):
    yield from _get_credential(credential_id)
    yield Q("UPDATE credentials SET hold = ? WHERE id = ?", (bool(hold), credential_id))
    return (yield from _get_credential(credential_id))


def _remove_credential(credential_id):
    yield from _get_credential(credential_id)
    yield Q("DELETE FROM credentials WHERE id = ?", (credential_id,))


# -- DKIM keys and verification tokens -----------------------------------------
#
# A domain has one active DKIM key (RFC 6376) and, during a rotation, retiring
# ones: a rotation adds a key under a new selector and marks the others
# retiring; they stay published (mail signed with them may still be queued or
# in flight, and verifiers look keys up when the mail arrives) until the
# operator finishes the rotation, which deletes them. Keys are generated by
# the caller, outside the transaction and off the reactor thread.

_DKIM_SELECT = (
    "SELECT k.id, k.domain_id, d.name, k.selector, k.algorithm, k.retiring, "
    "k.created_at, k.private_key FROM dkim_keys k JOIN domains d ON d.id = k.domain_id")
#: active first, then the newest
_DKIM_ORDER = " ORDER BY k.retiring, k.created_at DESC, k.id DESC"


def _dkim_key(row) -> DKIMKey:
    return DKIMKey(id=row[0], domain_id=row[1], domain=row[2], selector=row[3],
                   algorithm=row[4], retiring=bool(row[5]), created_at=row[6],
                   private_key=row[7])


def _require_domain(domain):
    """The domain C{domain} names: an id (C{int}), or a name owned by one
    owner only (a name may belong to several servers and organizations).

    @raise NotFound: none.
    @raise Conflict: the name has several owners; the message lists their ids.
    """
    if isinstance(domain, int):
        return (yield from _get_domain(domain))
    normal = normalise_domain(domain)
    if normal is None:
        raise ValueError(f"not a valid domain name: {domain!r}")
    rows = yield Q(_DOMAIN_SELECT + " WHERE d.name = ? ORDER BY d.id", (normal,))
    if not rows:
        raise NotFound(f"no domain {normal}")
    if len(rows) > 1:
        owners = ", ".join(f"{r[6]} (ID {r[0]})" for r in rows)
        raise Conflict(f"domain {normal} has several owners: {owners}; give the ID")
    return _domain(rows[0])


def _insert_dkim_key(domain_id, key, now):
    selector, algorithm, private_key = key
    rows = yield Q("INSERT INTO dkim_keys (domain_id, selector, algorithm, private_key, "
                   "retiring, created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                   (domain_id, selector, algorithm, private_key, False, now))
    return rows[0][0]


def _dkim_keys(domain):
    found = yield from _require_domain(domain)
    rows = yield Q(_DKIM_SELECT + " WHERE k.domain_id = ?" + _DKIM_ORDER, (found.id,))
    return [_dkim_key(r) for r in rows]


def _signing_keys(server_id, name):
    rows = yield Q(
        "SELECT d.id FROM domains d WHERE d.name = ? AND (d.server_id = ? OR "
        "d.organization_id = (SELECT organization_id FROM servers WHERE id = ?)) "
        "ORDER BY d.server_id IS NULL, d.id LIMIT 1", (name, server_id, server_id))
    if not rows:
        raise NotFound(f"server {server_id} has no domain {name}")
    rows = yield Q(_DKIM_SELECT + " WHERE k.domain_id = ? AND k.retiring = ?" + _DKIM_ORDER,
                   (rows[0][0], False))
    return [_dkim_key(r) for r in rows]


def _rotate_dkim(domain, key, now):
    """A new key; the domain's other keys of its algorithm retire (an
    Ed25519 key signs beside the RSA one, RFC 8463, and rotates on its own)."""
    found = yield from _require_domain(domain)
    yield Q("UPDATE dkim_keys SET retiring = ? WHERE domain_id = ? AND algorithm = ?",
            (True, found.id, key[1]))
    key_id = yield from _insert_dkim_key(found.id, key, now)
    rows = yield Q(_DKIM_SELECT + " WHERE k.id = ?", (key_id,))
    return _dkim_key(rows[0])


def _finish_dkim_rotation(domain):
    found = yield from _require_domain(domain)
    rows = yield Q(_DKIM_SELECT + " WHERE k.domain_id = ? AND k.retiring = ?" + _DKIM_ORDER,
                   (found.id, True))
    yield Q("DELETE FROM dkim_keys WHERE domain_id = ? AND retiring = ?", (found.id, True))
    return [_dkim_key(r) for r in rows]


def _claim_dns_checks(now, interval, limit):
    """Up to C{limit} domains whose check is due (never claimed, or claimed
    C{interval} seconds ago or more), claimed now: the condition is in the
    UPDATE itself, so two nodes never both claim one (PostgreSQL re-checks
    it on the row a concurrent claim changed)."""
    due = now - interval
    rows = yield Q(
        "UPDATE domains SET dns_claimed_at = ? WHERE (dns_claimed_at IS NULL OR "
        "dns_claimed_at <= ?) AND id IN (SELECT id FROM domains WHERE dns_claimed_at IS NULL "
        "OR dns_claimed_at <= ? ORDER BY dns_claimed_at IS NOT NULL, dns_claimed_at, id "
        "LIMIT ?) RETURNING id", (now, due, due, limit))
    if not rows:
        return []
    ids = [r[0] for r in rows]
    found = yield Q(_DOMAIN_SELECT + f" WHERE d.id IN {_ids_clause(ids)} ORDER BY d.id",
                    tuple(ids))
    return [_domain(r) for r in found]


def _record_dns_check(domain_id, checked_at, status, records):
    yield Q("UPDATE domains SET dns_checked_at = ?, dns_status = ?, dns_records = ? "
            "WHERE id = ?", (checked_at, status, records, domain_id))


def _dns_check_result(domain):
    found = yield from _require_domain(domain)
    rows = yield Q("SELECT dns_records FROM domains WHERE id = ?", (found.id,))
    return found, rows[0][0]


def _keyless_domains():
    rows = yield Q("SELECT d.id, d.name FROM domains d WHERE NOT EXISTS "
                   "(SELECT 1 FROM dkim_keys k WHERE k.domain_id = d.id) ORDER BY d.id")
    return [(r[0], r[1]) for r in rows]


def _first_dkim_key(domain_id, key, now):
    """C{key} as the domain's first key, unless it has one by now."""
    selector, algorithm, private_key = key
    rows = yield Q("INSERT INTO dkim_keys (domain_id, selector, algorithm, private_key, "
                   "retiring, created_at) SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS "
                   "(SELECT 1 FROM dkim_keys WHERE domain_id = ?) RETURNING id",
                   (domain_id, selector, algorithm, private_key, False, now, domain_id))
    return bool(rows)


def _domain_verification_token(domain, token):
    """The domain's token; C{token} becomes it when it has none (a domain
    added by a node that ran before schema 4 while this one ran after it)."""
    found = yield from _require_domain(domain)
    yield Q("UPDATE domains SET verification_token = ? WHERE id = ? "
            "AND verification_token IS NULL", (token, found.id))
    rows = yield Q("SELECT verification_token FROM domains WHERE id = ?", (found.id,))
    return rows[0][0]


# -- the relay -------------------------------------------------------------------------
#
# A relay node claims due entries by writing its id and a lease end into them
# (status stays "queued"); only the node named in locked_by may settle an
# entry, so an entry whose lease expired and was taken over by another node is
# not settled twice. SQLite serialises claims with BEGIN IMMEDIATE (one writer);
# PostgreSQL locks the candidate rows with FOR UPDATE SKIP LOCKED (the engine's
# claim_lock) so that concurrent nodes take disjoint sets without waiting. The
# outer WHERE repeats the conditions: under READ COMMITTED a row another node
# claimed meanwhile is re-checked and left out.

_CLAIMABLE = ("status = 'queued' AND next_attempt_at <= ? "
              "AND (locked_until IS NULL OR locked_until <= ?)")


def _ids_clause(ids) -> str:
    return "(" + ", ".join("?" for _ in ids) + ")"


def claim_rows_of(table: str, claimable: str, node_id, now, lease, limit, lock):
    """Lease up to C{limit} rows of C{table} (the queue, or webhook
    requests) that are C{claimable} (a condition with two C{?} for C{now}:
    due, and no lease in force) to C{node_id}.

    @return: the claimed ids, in order.
    """
    # MATERIALIZED: the candidates are chosen once. As a plain subquery,
    # PostgreSQL may re-run it per row, and a re-run no longer sees the rows
    # already updated, so it would hand out more than the limit.
    rows = yield Q(
        f"WITH due AS MATERIALIZED (SELECT id FROM {table} WHERE {claimable} "
        f"ORDER BY next_attempt_at, id LIMIT ?{lock}) "
        f"UPDATE {table} SET locked_by = ?, locked_until = ?, updated_at = ? "
        f"WHERE id IN (SELECT id FROM due) AND {claimable} RETURNING id",
        (now, now, int(limit), node_id, now + lease, now, now, now))
    return sorted(r[0] for r in rows)


def _claim_due(node_id, now, lease, limit, lock):
    ids = yield from claim_rows_of("queue", _CLAIMABLE, node_id, now, lease, limit, lock)
    if not ids:
        return []
    rows = yield Q(_QUEUE_SELECT + f" WHERE q.id IN {_ids_clause(ids)} ORDER BY q.id",
                   tuple(ids))
    entries = [_entry(r) for r in rows]
    rows = yield Q(f"SELECT id, coalesce(age_from, created_at), locked_until FROM queue "
                   f"WHERE id IN {_ids_clause(ids)}", tuple(ids))
    extra = {r[0]: (r[1], r[2]) for r in rows}
    return [Claim(e, *extra[e.id]) for e in entries]


def renew_leases_of(table: str, pending: str, node_id, ids, until):
    """Extend C{node_id}'s leases on the rows C{ids} of C{table} (the queue,
    or webhook requests) still in status C{pending}. @return: how many."""
    if not ids:
        return 0
    rows = yield Q(f"UPDATE {table} SET locked_until = ? WHERE locked_by = ? AND "
                   f"status = '{pending}' AND id IN {_ids_clause(ids)} RETURNING id",
                   (until, node_id, *ids))
    return len(rows)


def release_leases_of(table: str, node_id, ids):
    """Give up C{node_id}'s leases on the rows C{ids} of C{table}. @return: how many."""
    if not ids:
        return 0
    rows = yield Q(f"UPDATE {table} SET locked_by = NULL, locked_until = NULL WHERE "
                   f"locked_by = ? AND id IN {_ids_clause(ids)} RETURNING id",
                   (node_id, *ids))
    return len(rows)


def _renew_leases(node_id, entry_ids, until):
    return (yield from renew_leases_of("queue", "queued", node_id, entry_ids, until))


def _release_leases(node_id, entry_ids):
    return (yield from release_leases_of("queue", node_id, entry_ids))


def _read_body_chunk(message_id, seq):
    rows = yield Q("SELECT data FROM message_chunks WHERE message_id = ? AND seq = ?",
                   (message_id, seq))
    return bytes(rows[0][0]) if rows else None


def _record_attempt(attempt):
    rows = yield Q("SELECT 1 FROM queue WHERE id = ?", (attempt.queue_id,))
    if not rows:
        return False  # removed by the operator meanwhile: nothing to attach it to
    yield Q("INSERT INTO delivery_attempts (queue_id, attempted_at, node, remote_host, "
            "code, text) VALUES (?, ?, ?, ?, ?, ?)",
            (attempt.queue_id, attempt.attempted_at, attempt.node, attempt.remote_host,
             attempt.code, attempt.text))
    yield Q("UPDATE queue SET attempts = attempts + 1, last_error = ? WHERE id = ?",
            (None if _is_success(attempt) else attempt.text, attempt.queue_id))
    return True


def _is_success(attempt) -> bool:
    return attempt.code is not None and 200 <= attempt.code < 300


def _settle(entry_id, node_id, attempt, status, next_attempt_at, hold_reason=None):
    """Record C{attempt} and move the entry to C{status}, if this node still
    holds it. @return: whether it did."""
    rows = yield Q(
        "UPDATE queue SET status = ?, next_attempt_at = ?, hold_reason = ?, "
        "locked_by = NULL, locked_until = NULL, updated_at = ? WHERE id = ? "
        "AND locked_by = ? AND status = 'queued' RETURNING id",
        (status, next_attempt_at, hold_reason, attempt.attempted_at, entry_id, node_id))
    yield from _record_attempt(attempt)
    return bool(rows)


# Each settle writes its webhook event (docs/webhooks.md) in its own
# transaction: the event is in the outbox exactly when the outcome is.

def _mark_sent(entry_id, node_id, attempt):
    settled = yield from _settle(entry_id, node_id, attempt, "sent", None)
    if settled:
        yield from _webhooks.delivery_event(entry_id, "MessageSent", attempt)
    return settled


def _mark_retry(entry_id, node_id, attempt, next_attempt_at):
    settled = yield from _settle(entry_id, node_id, attempt, "queued", next_attempt_at)
    if settled:
        yield from _webhooks.delivery_event(entry_id, "MessageDelayed", attempt,
                                            retry_at=next_attempt_at)
    return settled


def _mark_held(entry_id, node_id, attempt, reason):
    settled = yield from _settle(entry_id, node_id, attempt, "held", None, reason)
    if settled:
        yield from _webhooks.delivery_event(entry_id, "MessageHeld", attempt,
                                            hold_reason=reason)
    return settled


def _mark_failed(entry_id, node_id, attempt, bounce):
    settled = yield from _settle(entry_id, node_id, attempt, "failed", None)
    if settled:
        yield from _webhooks.delivery_event(entry_id, "MessageDeliveryFailed", attempt)
    if settled and bounce is not None:
        envelope, body = bounce
        ids = yield from _enqueue(envelope, body, attempt.attempted_at)
        yield from _webhooks.bounce_event(entry_id, ids, attempt.attempted_at)
    return settled


def _get_attempts(entry_id):
    yield from _get_entry(entry_id)
    rows = yield Q("SELECT queue_id, attempted_at, remote_host, code, text, node "
                   "FROM delivery_attempts WHERE queue_id = ? ORDER BY attempted_at, id",
                   (entry_id,))
    return [DeliveryAttempt(*r) for r in rows]


def _requeue(entry_id, now, allowed):
    """Back to "queued", due now, its retry clock restarted; only from one
    of the C{allowed} statuses. @return: the updated entry."""
    entry = yield from _get_entry(entry_id)
    if entry.status not in allowed:
        raise Conflict(f"queue entry {entry_id} is {entry.status}, not "
                       f"{' or '.join(allowed)}")
    yield Q("UPDATE queue SET status = 'queued', hold_reason = NULL, next_attempt_at = ?, "
            "age_from = ?, updated_at = ? WHERE id = ?", (now, now, now, entry_id))
    return (yield from _get_entry(entry_id))


def _remove_entry(entry_id):
    entry = yield from _get_entry(entry_id)
    yield Q("DELETE FROM queue WHERE id = ?", (entry_id,))
    rows = yield Q("SELECT 1 FROM queue WHERE message_id = ? LIMIT 1", (entry.message_id,))
    if not rows:  # the last recipient of its message: the body goes too
        yield Q("DELETE FROM messages WHERE id = ?", (entry.message_id,))


# -- a message by its queue id (the token SMTP and the HTTP API answer with) -------

def _message_entries(token):
    rows = yield Q(_QUEUE_SELECT + " WHERE m.token = ? ORDER BY q.id", (token,))
    if not rows:
        raise NotFound(f"no message with queue id {token}")
    return [_entry(r) for r in rows]


def _requeue_message(token, now, allowed):
    """L{_requeue} for every entry of the message in one of the C{allowed}
    statuses. @return: the updated entries (at least one)."""
    entries = yield from _message_entries(token)
    chosen = [e.id for e in entries if e.status in allowed]
    if not chosen:
        statuses = ", ".join(sorted({e.status for e in entries}))
        raise Conflict(f"message {token} has no {' or '.join(allowed)} queue entry "
                       f"(its entries are {statuses})")
    # The status is checked again: under READ COMMITTED a relay node may have
    # settled an entry since it was read above.
    rows = yield Q(
        "UPDATE queue SET status = 'queued', hold_reason = NULL, next_attempt_at = ?, "
        f"age_from = ?, updated_at = ? WHERE id IN {_ids_clause(chosen)} "
        f"AND status IN {_ids_clause(allowed)} RETURNING id",
        (now, now, now, *chosen, *allowed))
    changed = sorted(r[0] for r in rows)
    if not changed:
        raise Conflict(f"message {token} has no {' or '.join(allowed)} queue entry any more")
    rows = yield Q(_QUEUE_SELECT + f" WHERE q.id IN {_ids_clause(changed)} ORDER BY q.id",
                   tuple(changed))
    return [_entry(r) for r in rows]


def _remove_message(token):
    entries = yield from _message_entries(token)
    # its queue entries, their attempts and its body go with it (ON DELETE CASCADE)
    yield Q("DELETE FROM messages WHERE token = ?", (token,))
    return entries


# -- a server's own message, for the HTTP API's message routes ---------------------

@dataclass(frozen=True)
class RecordedAttempt:
    """A delivery attempt as stored: its row id and the L{DeliveryAttempt}."""
    id: int
    attempt: DeliveryAttempt


@dataclass(frozen=True)
class ServerMessage:
    """What L{Store.message_for_server} found.

    @ivar entries: the entry asked for by id, or every entry of the message
        asked for by token, in id order; never empty.
    @ivar attempts: the L{RecordedAttempt}s of those entries, oldest first.
    """
    entries: tuple
    attempts: tuple


#: ids are signed 64-bit on both engines; a larger number names nothing (and
#: would overflow the driver's parameter)
_MAX_ID = 2 ** 63 - 1


def _message_for_server(server_id, ref):
    if isinstance(ref, int):
        if not 0 < ref <= _MAX_ID:
            raise NotFound(f"no queue entry {ref}")
        rows = yield Q(_QUEUE_SELECT + " WHERE q.id = ? AND m.server_id = ?",
                       (ref, server_id))
    else:
        rows = yield Q(_QUEUE_SELECT + " WHERE m.token = ? AND m.server_id = ? "
                       "ORDER BY q.id", (ref, server_id))
    if not rows:
        # another server's message is as unknown as one that never was
        raise NotFound(f"no message {ref} of server {server_id}")
    entries = tuple(_entry(r) for r in rows)
    columns = ("SELECT a.id, a.queue_id, a.attempted_at, a.remote_host, a.code, a.text, "
               "a.node FROM delivery_attempts a ")
    if isinstance(ref, int):
        rows = yield Q(columns + "WHERE a.queue_id = ? ORDER BY a.attempted_at, a.id",
                       (ref,))
    else:
        rows = yield Q(columns + "JOIN queue q ON q.id = a.queue_id WHERE q.message_id = ? "
                       "ORDER BY a.attempted_at, a.id", (entries[0].message_id,))
    attempts = tuple(RecordedAttempt(r[0], DeliveryAttempt(*r[1:])) for r in rows)
    return ServerMessage(entries, attempts)


def _schema_version(table_query):
    rows = yield Q(table_query)
    if not rows[0][0]:  # never upgraded: looked at, not created
        return 0
    rows = yield Q("SELECT coalesce(max(version), 0) FROM schema_version")
    return rows[0][0]


# -- the failure throttle's notice board (docs/operations.md) ----------------------
#
# Each node records its lock-outs as they happen and removes its rows when it
# stops; the operator's clear removes every node's rows for a key and appends
# a clear, which every node reads by id. On PostgreSQL, ids come from a
# sequence and may commit out of order; the engine's clear_lock serialises the
# clears so that a node that has read id N can never later find an id below N
# committed. SQLite has one writer at a time anyway.

#: seconds a clear is kept: any node running then has read it long before
CLEAR_RETENTION = 86400.0


@dataclass(frozen=True)
class Lockout:
    """A lock-out one node's throttle holds, as recorded in the store.

    @ivar address: the client key, C{192.0.2.1} or C{2001:db8:1:2::/64}.
    @ivar kind: C{"key"} (failed keys) or C{"anonymous"} (attempts without one).
    @ivar node: the node whose throttle holds it.
    @ivar locked_until: epoch seconds.
    @ivar failures: the failures that led to it.
    """
    address: str
    kind: str
    node: str
    locked_until: float
    failures: int


@dataclass(frozen=True)
class ThrottleClear:
    """An operator's clear of a client key, for every node to apply."""
    id: int
    address: str
    cleared_at: float


def _record_lockout(address, node, kind, locked_until, failures, now):
    # expired rows of any node go as new ones come, using the index
    yield Q("DELETE FROM lockouts WHERE locked_until <= ?", (now,))
    yield Q("INSERT INTO lockouts (address_key, node, kind, locked_until, failures) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (address_key, node, kind) DO UPDATE "
            "SET locked_until = excluded.locked_until, failures = excluded.failures",
            (address, node, kind, float(locked_until), int(failures)))


def _list_lockouts(now):
    rows = yield Q("SELECT address_key, kind, node, locked_until, failures FROM lockouts "
                   "WHERE locked_until > ? ORDER BY address_key, kind, node", (now,))
    return [Lockout(*r) for r in rows]


def _clear_lockouts(address, now, lock):
    if lock:
        yield Q(lock)
    rows = yield Q("DELETE FROM lockouts WHERE address_key = ? RETURNING locked_until",
                   (address,))
    yield Q("INSERT INTO throttle_clears (address_key, cleared_at) VALUES (?, ?)",
            (address, now))
    yield Q("DELETE FROM throttle_clears WHERE cleared_at < ?", (now - CLEAR_RETENTION,))
    return sum(1 for (until,) in rows if until > now)


def _throttle_clears_after(clear_id):
    rows = yield Q("SELECT id, address_key, cleared_at FROM throttle_clears WHERE id > ? "
                   "ORDER BY id", (int(clear_id),))
    return [ThrottleClear(*r) for r in rows]


def _latest_throttle_clear():
    rows = yield Q("SELECT coalesce(max(id), 0) FROM throttle_clears")
    return rows[0][0]


def _forget_lockouts(node):
    yield Q("DELETE FROM lockouts WHERE node = ?", (node,))


def new_verification_token() -> str:
    """A domain's verification token: 24 random letters and digits."""
    return generate_key(VERIFICATION_TOKEN_LENGTH)


def _dkim_material(algorithm: str) -> tuple[str, str, str]:
    return dkim.new_selector(), algorithm, dkim.generate_key(algorithm)


def _new_dkim(algorithm: str = "rsa"):
    """A new DKIM key, C{(selector, algorithm, PEM)}, generated in a thread:
    an RSA key takes tens of milliseconds, too long for the reactor thread
    (PostgreSQL runs a transaction's Python on it).

    @raise ValueError: (as a failure) an unknown algorithm."""
    if algorithm not in dkim.ALGORITHMS:
        return defer.fail(ValueError(f"unknown DKIM key algorithm {algorithm!r}: use "
                                     f"{' or '.join(dkim.ALGORITHMS)}"))
    return threads.deferToThread(_dkim_material, algorithm)


@implementer(IStore)
class Store:
    """Every store interface over one engine.

    Subclasses provide C{engine}, C{start}, C{close}, C{upgrade} and
    C{_run(generator_function, *args)}, which runs one transaction and returns
    a Deferred of the generator's return value (failing with StoreUnavailable
    when the database is out of reach).
    """

    engine = None

    def __init__(self, clock):
        self._clock = clock

    def _now(self) -> float:
        return self._clock.seconds()

    def _run(self, fn, *args):
        raise NotImplementedError

    def _read(self, fn, *args):
        """A transaction that only reads (an engine may run it elsewhere)."""
        return self._run(fn, *args)

    # IDirectory
    def credential_by_key(self, key, type):
        return self._read(_credential_by_key, key, type)

    def credential_by_id(self, credential_id):
        return self._read(_credential_by_id, credential_id)

    def credentials_of_server(self, organization, server, type):
        return self._read(_credentials_of_server, organization, server, type)

    def credential_for_address(self, address):
        d = self._read(_ip_credentials)
        d.addCallback(lambda pairs: most_specific_network(
            address, [(c.key, (c, s)) for c, s in pairs]))
        return d

    def server_by_id(self, server_id):
        return self._read(_server_by_id, server_id)

    def authorised_domains(self, server_id):
        return self._read(_authorised_domains, server_id)

    def touch_credential(self, credential_id, when):
        return self._run(_touch_credential, credential_id, when)

    def messages_since(self, server_id, since):
        return self._read(_messages_since, server_id, since)

    # IQueue
    def enqueue(self, envelope, body):
        return self._run(_enqueue, envelope, body, self._now())

    def list_entries(self, status=None, server=None, limit=None, newest_first=False):
        return self._read(_list_entries, status, server, limit, newest_first)

    def get_entry(self, entry_id):
        return self._read(_get_entry, entry_id)

    def queue_counts(self):
        return self._read(_queue_counts)

    def ping(self):
        return self._read(_ping)

    def read_body(self, message_id):
        return self._read(_read_body, message_id)

    # IAdmin
    def add_organization(self, permalink, name):
        return self._run(_add_organization, permalink, name, self._now())

    def list_organizations(self):
        return self._read(_list_organizations)

    def set_organization_suspended(self, permalink, suspended):
        return self._run(_set_organization_suspended, permalink, bool(suspended))

    def add_server(self, organization, permalink, name, **flags):
        return self._run(_add_server, organization, permalink, name, flags, self._now())

    def update_server(self, organization, permalink, **changes):
        return self._run(_update_server, organization, permalink, changes)

    def get_server(self, organization, permalink):
        return self._read(_require_server, organization, permalink)

    def list_servers(self, organization=None):
        return self._read(_list_servers, organization)

    def add_domain(self, name, server=None, organization=None, verified=False,
                   use_for_any=False):
        d = _new_dkim()
        d.addCallback(lambda key: self._run(
            _add_domain, name, server, organization, verified, use_for_any, self._now(),
            new_verification_token(), key))
        return d

    def list_domains(self, server=None, organization=None):
        return self._read(_list_domains, server, organization)

    def set_domain_verified(self, domain_id, verified):
        return self._run(_set_domain_verified, domain_id, verified)

    def remove_domain(self, domain_id):
        return self._run(_remove_domain, domain_id)

    def add_credential(self, server, type, key, name="", hold=False):
        return self._run(_add_credential, server, type, key, name, hold, self._now())

    def list_credentials(self, server):
        return self._read(_list_credentials, server)

    def set_credential_hold(self, credential_id, hold):
        return self._run(_set_credential_hold, credential_id, hold)

    def remove_credential(self, credential_id):
        return self._run(_remove_credential, credential_id)

    # IAdmin: DKIM keys and verification tokens
    def dkim_keys(self, domain):
        return self._read(_dkim_keys, domain)

    def rotate_dkim(self, domain, algorithm="rsa"):
        d = _new_dkim(algorithm)
        d.addCallback(lambda key: self._run(_rotate_dkim, domain, key, self._now()))
        return d

    def finish_dkim_rotation(self, domain):
        return self._run(_finish_dkim_rotation, domain)

    @defer.inlineCallbacks
    def _after_upgrade(self, applied):
        """What SQL alone cannot upgrade: a domain added before schema 4
        gets its first DKIM key (RSA; a key is generated in a thread), so
        that its mail can be signed rather than held (docs/dkim.md).

        @return: Deferred firing with C{applied}.
        """
        for domain_id, name in (yield self._read(_keyless_domains)):
            key = yield _new_dkim("rsa")
            if (yield self._run(_first_dkim_key, domain_id, key, self._now())):
                log.warn("store: domain {name} had no DKIM key: made one under selector "
                         "{selector}; publish it (mailgw domain dns {name})", name=name,
                         selector=key[0])
        return applied

    def claim_dns_checks(self, now, interval, limit):
        return self._run(_claim_dns_checks, now, interval, limit)

    def record_dns_check(self, domain_id, checked_at, status, records):
        return self._run(_record_dns_check, domain_id, checked_at, status, records)

    def dns_check_result(self, domain):
        return self._read(_dns_check_result, domain)

    def domain_verification_token(self, domain):
        return self._run(_domain_verification_token, domain, new_verification_token())

    #: whether the schema_version table exists, asked without creating it
    _SCHEMA_TABLE = {
        "sqlite": "SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                  "AND name = 'schema_version'",
        "postgresql": "SELECT count(*) FROM pg_catalog.pg_tables WHERE "
                      "schemaname = current_schema() AND tablename = 'schema_version'",
    }

    def schema_version(self):
        return self._read(_schema_version, self._SCHEMA_TABLE[self.engine])

    # IAdmin: the failure throttle's notice board

    #: run first in a clear: PostgreSQL writes clears one at a time, so their
    #: ids commit in order (see _clear_lockouts); SQLite needs nothing
    _CLEAR_LOCKS = {"postgresql": "LOCK TABLE throttle_clears IN SHARE ROW EXCLUSIVE MODE"}

    def record_lockout(self, address, node, kind, locked_until, failures):
        return self._run(_record_lockout, address, node, kind, locked_until, failures,
                         self._now())

    def list_lockouts(self):
        return self._read(_list_lockouts, self._now())

    def clear_lockouts(self, address):
        return self._run(_clear_lockouts, address, self._now(),
                         self._CLEAR_LOCKS.get(self.engine, ""))

    def throttle_clears_after(self, clear_id):
        return self._read(_throttle_clears_after, clear_id)

    def latest_throttle_clear(self):
        return self._read(_latest_throttle_clear)

    def forget_lockouts(self, node):
        return self._run(_forget_lockouts, node)

    # IRelayQueue

    #: appended to the claim's inner SELECT: PostgreSQL locks the candidate
    #: rows and skips those another node is claiming (FOR UPDATE SKIP
    #: LOCKED); SQLite needs nothing, its BEGIN IMMEDIATE admits one writer
    _CLAIM_LOCKS = {"postgresql": " FOR UPDATE SKIP LOCKED"}

    @property
    def claim_lock(self) -> str:
        return self._CLAIM_LOCKS.get(self.engine, "")

    def claim_due(self, node_id, now, lease, limit):
        return self._run(_claim_due, node_id, now, lease, limit, self.claim_lock)

    def renew_leases(self, node_id, entry_ids, until):
        return self._run(_renew_leases, node_id, tuple(entry_ids), until)

    def release_leases(self, node_id, entry_ids):
        return self._run(_release_leases, node_id, tuple(entry_ids))

    def read_body_chunk(self, message_id, seq):
        return self._read(_read_body_chunk, message_id, seq)

    def record_attempt(self, attempt):
        return self._run(_record_attempt, attempt)

    def mark_sent(self, entry_id, node_id, attempt):
        return self._run(_mark_sent, entry_id, node_id, attempt)

    def mark_retry(self, entry_id, node_id, attempt, next_attempt_at):
        return self._run(_mark_retry, entry_id, node_id, attempt, next_attempt_at)

    def mark_held(self, entry_id, node_id, attempt, reason):
        return self._run(_mark_held, entry_id, node_id, attempt, reason)

    def signing_keys(self, server_id, domain):
        return self._read(_signing_keys, server_id, domain)

    def mark_failed(self, entry_id, node_id, attempt, bounce=None):
        if bounce is not None:
            envelope, body = bounce
            bounce = (envelope, io.BytesIO(body))
        return self._run(_mark_failed, entry_id, node_id, attempt, bounce)

    def get_attempts(self, entry_id):
        return self._read(_get_attempts, entry_id)

    def release_entry(self, entry_id):
        return self._run(_requeue, entry_id, self._now(), ("held",))

    def retry_entry(self, entry_id):
        return self._run(_requeue, entry_id, self._now(), ("failed", "queued"))

    def remove_entry(self, entry_id):
        return self._run(_remove_entry, entry_id)

    def message_entries(self, token):
        return self._read(_message_entries, token)

    def release_message(self, token):
        return self._run(_requeue_message, token, self._now(), ("held",))

    def retry_message(self, token):
        return self._run(_requeue_message, token, self._now(), ("failed", "queued"))

    def remove_message(self, token):
        return self._run(_remove_message, token)

    # IRelayQueue: a server's own message, for the HTTP API

    def message_for_server(self, server_id, ref):
        return self._read(_message_for_server, server_id, ref)

    # IUsers: the web interface's users (docs/web.md)

    def add_user(self, email, admin=False, organizations=()):
        return self._run(users.add_user, email, admin, tuple(organizations), self._now())

    def list_users(self):
        return self._read(users.list_users)

    def get_user(self, ref):
        return self._read(users.get_user, ref)

    def remove_user(self, ref):
        return self._run(users.remove_user, ref)

    def grant_organization(self, ref, organization):
        return self._run(users.grant_organization, ref, organization)

    def set_user_password(self, ref, password_hash):
        return self._run(users.set_password, ref, password_hash)

    def add_user_token(self, ref, digest, purpose, expires_at, csrf_token=""):
        return self._run(users.add_token, ref, digest, purpose, csrf_token, expires_at,
                         self._now())

    def user_token(self, digest, purpose):
        return self._read(users.token_user, digest, purpose, self._now())

    def remove_user_token(self, digest):
        return self._run(users.remove_token, digest)

    def set_password_with_token(self, digest, password_hash):
        return self._run(users.set_password_with_token, digest, password_hash, self._now())


# at the end: mailgw.store.users builds on this module's Q
from mailgw.store import users  # noqa: E402
# last too: it builds on the statements above (and base.py's settles call it)
from mailgw.store import webhooks as _webhooks  # noqa: E402
