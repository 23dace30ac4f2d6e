"""The verbs of the ``mailgw`` command: one coroutine each, from parsed
arguments and an open store to an L{Output}.

Arguments have been checked before a verb runs (see L{mailgw.admin.cli}):
permalinks are valid, C{args.server} is an C{(org, server)} pair, and a
credential's C{args.key} is the key to store; a queue verb's C{args.id} is an
entry id or an upper-case queue id. A verb only talks to the store
through L{mailgw.interfaces.IAdmin}, L{mailgw.interfaces.IQueue} and
L{mailgw.interfaces.IRelayQueue}; every
failure it meets (C{NotFound}, C{Conflict}, ...) becomes the one-line error.

C{config check} is the exception: it is given the reactor and the config
rather than an open store, and opens (and closes) the store itself.
"""
from __future__ import annotations

import os
import re
import time
from urllib.parse import parse_qs, unquote, urlsplit

from mailgw.admin.output import (
    ATTEMPT_COLUMNS, CHECK_COLUMNS, CREDENTIAL_COLUMNS, DOMAIN_COLUMNS, ENTRY_COLUMNS, LISTENER_COLUMNS,
    LOCKOUT_COLUMNS, MESSAGE_ENTRY_COLUMNS, ORGANIZATION_COLUMNS, SERVER_COLUMNS, Output,
    attempt_json, cell, count, credential_json, dkim_key_json, dns_records_text,
    domain_json, entry_json, fields, iso8601,
    listener_json, lockout_json, message_headers, message_json, organization_json,
    printable, relay_json, relay_text, server_json, table,
)
from mailgw.admin import webhooks
from mailgw.auth.throttle import throttle_key
from mailgw.domains import monitor, records
from mailgw.interfaces import NotFound

#: the settings C{server set} may change, as the store names them
SERVER_SETTINGS = ("allow_sender_header", "privacy_mode", "mode", "send_limit")


def _one(data: dict) -> Output:
    return Output(data, fields(data))


def _many(rows: list[dict], columns, empty: str) -> Output:
    return Output(rows, table(columns, rows, empty))


def _removed(kind: str, ident: int) -> Output:
    return Output({"removed": kind, "id": ident}, f"removed {kind} {ident}")


def _full(server: tuple[str, str]) -> str:
    return "/".join(server)


# -- db ------------------------------------------------------------------

async def db_upgrade(store, args) -> Output:
    applied = await store.upgrade()
    if applied:
        text = "applied schema versions: " + ", ".join(str(v) for v in applied)
    else:
        text = "schema is up to date"
    return Output({"applied": applied}, text)


# -- organizations -------------------------------------------------------

async def org_add(store, args) -> Output:
    org = await store.add_organization(args.permalink, args.name or args.permalink)
    return _one(organization_json(org))


async def org_list(store, args) -> Output:
    orgs = await store.list_organizations()
    return _many([organization_json(o) for o in orgs], ORGANIZATION_COLUMNS,
                 "no organizations")


async def org_suspend(store, args) -> Output:
    org = await store.set_organization_suspended(args.permalink, args.suspended)
    return _one(organization_json(org))


# -- servers -------------------------------------------------------------

async def server_add(store, args) -> Output:
    org, permalink = args.server
    flags = {"allow_sender_header": args.allow_sender_header,
             "privacy_mode": args.privacy_mode, "mode": args.mode,
             "send_limit": args.send_limit}
    server = await store.add_server(org, permalink, args.name or permalink, **flags)
    return _one(server_json(server))


def server_changes(args) -> dict:
    """The settings given to C{server set} (absent options are not in C{args})."""
    return {k: getattr(args, k) for k in SERVER_SETTINGS if hasattr(args, k)}


def check_server_set(args) -> None:
    if not server_changes(args):
        raise ValueError("nothing to change: give --allow-sender-header, "
                         "--privacy-mode, --mode or --send-limit")


async def server_set(store, args) -> Output:
    server = await store.update_server(*args.server, **server_changes(args))
    return _one(server_json(server))


async def server_list(store, args) -> Output:
    servers = await store.list_servers(args.org)
    return _many([server_json(s) for s in servers], SERVER_COLUMNS, "no servers")


async def server_suspend(store, args) -> Output:
    server = await store.update_server(*args.server, suspended=args.suspended)
    return _one(server_json(server))


# -- domains -------------------------------------------------------------

def check_domain_add(args) -> None:
    if args.use_for_any and args.server is None:
        raise ValueError("--use-for-any applies only to a domain owned by a server")


async def domain_add(store, args) -> Output:
    domain = await store.add_domain(
        args.name, server=args.server, organization=args.org,
        verified=args.verified, use_for_any=args.use_for_any)
    if args.ed25519:
        await store.rotate_dkim(domain.id, "ed25519")
    keys = await store.dkim_keys(domain.id)
    rsa = [k.selector for k in keys if k.algorithm == "rsa"]
    out = dict(domain_json(domain), dkim_selector=rsa[0] if rsa else None)
    if args.ed25519:
        out["dkim_ed25519_selector"] = next(k.selector for k in keys if k.algorithm == "ed25519")
    return _one(out)


async def domain_list(store, args) -> Output:
    domains = await store.list_domains(server=args.server, organization=args.org)
    return _many([domain_json(d) for d in domains], DOMAIN_COLUMNS, "no domains")


async def domain_verify(store, args) -> Output:
    """C{unverify ID}, and C{verify NAME|ID --force}: set the flag."""
    domain_id = args.id if args.verified is False else await _domain_id(store, args.domain)
    domain = await store.set_domain_verified(domain_id, args.verified)
    return _one(domain_json(domain))


async def domain_verify_dns(store, args) -> Output:
    """C{verify NAME|ID}: mark the domain verified only when its ownership
    TXT record is published (as Postal verifies domains); C{--force} sets
    the flag without looking."""
    if args.force:
        return await domain_verify(store, args)
    domain = await records.verify_through_dns(store, args.lookup, args.domain)
    return Output(domain_json(domain), f"verified {domain.name}")


async def domain_remove(store, args) -> Output:
    await store.remove_domain(args.id)
    return _removed("domain", args.id)


# -- DNS records and DKIM keys -------------------------------------------

def domain_ref(text: str) -> int | str:
    """A domain verb's C{NAME}: digits are a domain's ID (as C{domain list}
    shows), anything else its name."""
    return int(text) if text.isdigit() and int(text) <= MAX_ID else text


async def _domain_name(store, ref: int | str) -> str:
    if isinstance(ref, str):
        from mailgw.address import normalise_domain
        return normalise_domain(ref)
    for domain in await store.list_domains():
        if domain.id == ref:
            return domain.name
    raise NotFound(f"no domain {ref}")


async def _domain_id(store, ref: int | str) -> int:
    """The ID of the domain C{ref} names (failing as the store does for an
    unknown or ambiguous name)."""
    if isinstance(ref, int):
        return ref
    keys = await store.dkim_keys(ref)
    if keys:
        return keys[0].domain_id
    name = await _domain_name(store, ref)
    [domain] = [d for d in await store.list_domains() if d.name == name]
    return domain.id


async def domain_check(store, args) -> Output:
    """Each record C{domain dns} asks for, looked up: OK, Missing or Invalid
    with the value expected, as on Postal's DNS page. The result is kept as
    the periodic check keeps its own (C{domain list} shows it)."""
    rows = await monitor.check_and_keep(store, args.lookup, args.dns, args.domain)
    return _many(rows, CHECK_COLUMNS, "no records")


async def domain_dns(store, args) -> Output:
    name, found, keys = await records.records_to_publish(store, args.dns, args.domain)
    text = dns_records_text(found)
    if not keys:
        text += (f"\n; no DKIM key (the domain was added before mailgw made them): "
                 f"run `mailgw domain rotate-dkim {name}`")
    return Output(found, text)


async def domain_rotate_dkim(store, args) -> Output:
    if args.finish:
        removed = [dkim_key_json(k) for k in await store.finish_dkim_rotation(args.domain)]
        if removed:
            text = "removed retiring DKIM keys: " + ", ".join(k["selector"] for k in removed)
        else:
            text = "no retiring DKIM keys"
        return Output({"removed": removed}, text)
    key = dkim_key_json(await store.rotate_dkim(args.domain, args.algorithm))
    text = fields({k: v for k, v in key.items() if k != "value"})
    text += ("\npublish this record, then, once receivers have it and mail signed with "
             "the old keys has been delivered, run `mailgw domain rotate-dkim "
             f"{key['domain']} --finish`:\n" + dns_records_text([dict(
                 key, purpose="dkim", retiring=False)]))
    return Output(key, text)

async def credential_add(store, args) -> Output:
    credential = await store.add_credential(
        args.server, args.type, args.key, name=args.name, hold=args.hold)
    return _one(credential_json(credential, _full(args.server)))


async def credential_list(store, args) -> Output:
    credentials = await store.list_credentials(args.server)
    rows = [credential_json(c, _full(args.server)) for c in credentials]
    return _many(rows, CREDENTIAL_COLUMNS, "no credentials")


async def credential_hold(store, args) -> Output:
    credential = await store.set_credential_hold(args.id, args.hold)
    server = await store.server_by_id(credential.server_id)
    return _one(credential_json(credential, server.full_name if server else None))


async def credential_remove(store, args) -> Output:
    await store.remove_credential(args.id)
    return _removed("credential", args.id)


# -- the queue -------------------------------------------------------------

async def queue_list(store, args) -> Output:
    server = _full(args.server) if args.server else None
    entries = await store.list_entries(status=args.status, server=server,
                                       limit=args.limit)
    return _many([entry_json(e) for e in entries], ENTRY_COLUMNS, "no queue entries")


#: what a queue verb accepts: an entry id (digits) or a queue id (letters and
#: digits, the token of C{250 OK: queued as <token>} and of the HTTP API)
QUEUE_REF_RE = re.compile(r"[A-Za-z0-9]+\Z")
#: the largest id both engines store (a 64-bit signed integer)
MAX_ID = 2 ** 63 - 1


def check_queue_ref(args) -> None:
    """Make C{args.id} a queue entry id (digits) or a queue id in upper case:
    queue ids are upper-case letters and digits, typed by hand in any case.

    @raise ValueError: neither.
    """
    if not QUEUE_REF_RE.match(args.id):
        raise ValueError(f"invalid queue entry id or queue id {args.id!r}: use the ID "
                         f"or TOKEN that `mailgw queue list` shows")
    args.id = args.id.upper()


def check_queue_show(args) -> None:
    check_queue_ref(args)
    if args.raw and args.json:
        raise ValueError("--raw writes the message itself; leave out --json")


async def resolve(store, ref: str) -> tuple:
    """What a queue verb's C{ID} names.

    Digits are an entry id, as they always were; a queue id may be all
    digits too, so digits that are no entry id but have a queue id's length
    are tried as one.

    @return: C{(entry, None)} for an entry id, or C{(None, entries)} with
        the entries of the message whose queue id C{ref} is.
    @raise NotFound: neither exists.
    """
    if not ref.isdigit() or int(ref) > MAX_ID:
        return None, await store.message_entries(ref)
    try:
        return await store.get_entry(int(ref)), None
    except NotFound:
        from mailgw.submission import QUEUE_ID_LENGTH  # only now: it weighs 20 ms
        if len(ref) != QUEUE_ID_LENGTH:
            raise
    try:
        return None, await store.message_entries(ref)
    except NotFound:
        raise NotFound(f"no queue entry or queue id {ref}") from None


async def queue_show(store, args) -> Output:
    entry, entries = await resolve(store, args.id)
    if entries is not None:
        return await _show_message(store, entries, args.raw)
    if args.raw:
        return Output(raw=await store.read_body(entry.message_id))
    headers = await _headers(store, entry.message_id)
    attempts = [attempt_json(a) for a in await store.get_attempts(entry.id)]
    data = dict(entry_json(entry), headers=headers, delivery_attempts=attempts)
    text = fields(entry_json(entry))
    text += "\n\ndelivery attempts:\n" + table(ATTEMPT_COLUMNS, attempts, "  none yet")
    text += "\n\n" + printable(headers)
    return Output(data, text)


async def _headers(store, message_id: int) -> str:
    # the header section is within the first stored piece: no need to read
    # (maybe 50 MB of) the whole message
    head = await store.read_body_chunk(message_id, 0) or b""
    return message_headers(head).decode("utf-8", "replace").replace("\r\n", "\n")


async def _show_message(store, entries, raw: bool) -> Output:
    """A message with every one of its entries and their delivery attempts."""
    message_id = entries[0].message_id
    if raw:
        return Output(raw=await store.read_body(message_id))
    rows, sections = [], []
    for entry in entries:
        try:
            attempts = [attempt_json(a) for a in await store.get_attempts(entry.id)]
        except NotFound:  # removed since the message was read
            continue
        rows.append(dict(entry_json(entry), delivery_attempts=attempts))
        sections.append(f"delivery attempts of entry {entry.id} "
                        f"({printable(entry.rcpt_to)}):\n"
                        + table(ATTEMPT_COLUMNS, attempts, "  none yet"))
    headers = await _headers(store, message_id)
    message = message_json(entries[0])
    data = dict(message, entries=rows, headers=headers)
    text = fields(message)
    text += "\n\nqueue entries:\n" + table(MESSAGE_ENTRY_COLUMNS, rows, "  none")
    text += "".join("\n\n" + section for section in sections)
    text += "\n\n" + printable(headers)
    return Output(data, text)


def _requeued(verb: str, token: str, changed, total: int) -> Output:
    rows = [entry_json(e) for e in changed]
    text = (f"{verb} {len(changed)} of {count(total, 'queue entry', 'queue entries')} "
            f"of {token}\n" + table(ENTRY_COLUMNS, rows, ""))
    return Output({"token": token, verb: len(changed), "entries": rows}, text)


async def queue_release(store, args) -> Output:
    """A held entry back to the queue, due now; or every held entry of a
    message."""
    entry, entries = await resolve(store, args.id)
    if entry is not None:
        return _one(entry_json(await store.release_entry(entry.id)))
    released = await store.release_message(args.id)
    return _requeued("released", args.id, released, len(entries))


async def queue_retry(store, args) -> Output:
    """A failed (or waiting) entry due now; or every failed or waiting entry
    of a message."""
    entry, entries = await resolve(store, args.id)
    if entry is not None:
        return _one(entry_json(await store.retry_entry(entry.id)))
    retried = await store.retry_message(args.id)
    return _requeued("retried", args.id, retried, len(entries))


async def queue_remove(store, args) -> Output:
    """An entry (and its message, when it was the last recipient); or a
    message with every one of its entries."""
    entry, _ = await resolve(store, args.id)
    if entry is not None:
        await store.remove_entry(entry.id)
        return _removed("queue entry", entry.id)
    removed = await store.remove_message(args.id)
    return Output({"removed": "message", "token": args.id, "entries_removed": len(removed)},
                  f"removed message {args.id} and its "
                  f"{count(len(removed), 'queue entry', 'queue entries')}")


# -- the failure throttle (docs/operations.md) ---------------------------------

def check_throttle_clear(args) -> None:
    """Make C{args.address} the key the gateways count it under (an IPv6
    address names its /64, or the config's C{ipv6_prefix})."""
    args.address = throttle_key(args.address, args.auth_throttle.ipv6_prefix)


async def throttle_list(store, args) -> Output:
    """The lock-outs in force on every node sharing the database."""
    lockouts = await store.list_lockouts()
    return _many([lockout_json(lockout) for lockout in lockouts], LOCKOUT_COLUMNS,
                 "no lock-outs")


async def throttle_clear(store, args) -> Output:
    """Lift a lock-out and forget the counted failures, on every node: each
    running gateway applies the clear within a second or two."""
    removed = await store.clear_lockouts(args.address)
    text = (f"cleared {args.address}: {removed} lock-out{'' if removed == 1 else 's'} "
            f"removed; running gateways forget its failures within a few seconds")
    return Output({"cleared": args.address, "lockouts_removed": removed}, text)


# -- config check ------------------------------------------------------------------
#
# What `twistd mailgw` would do with the config before it accepts mail, done
# without listening on anything or changing the database: the first problem
# met is the one-line error. The config itself has been parsed by then.

async def config_check(reactor, config, args) -> Output:
    """Check C{config} as the gateway would use it and show what it would do.

    @param reactor: for the endpoints (parsed, never listened on) and the store.
    @raise ValueError: with the line to show the operator (so do
        C{StoreUnavailable} and C{OSError}).
    """
    tls = _check_tls(config)
    _check_endpoints(reactor, config)
    spool_exists = _directory_exists_or_creatable(config.spool_directory,
                                                  "spool_directory")
    database = await _check_database(reactor, config)
    api = config.http_api
    data = {
        "config": config.source,
        "hostname": config.hostname,
        "workers": config.server.workers,
        "listeners": [listener_json(listener) for listener in config.listeners],
        "http_api": None if api is None else {
            "endpoint": api.endpoint, "tls": api.tls, "max_connections": api.max_connections,
            "max_connections_per_ip": api.max_connections_per_ip},
        "metrics": config.metrics.endpoint or None,
        "web": None if config.web is None else {
            "endpoint": config.web.endpoint, "tls": config.web.tls},
        "tls": tls,
        "database": database,
        "spool_directory": {"path": config.spool_directory, "exists": spool_exists},
        "relay": relay_json(config.relay),
        "webhooks": webhooks.check_settings(config.webhooks),
    }
    return Output(data, _check_text(data))


def _check_tls(config) -> dict | None:
    """Load the certificate and key as the gateway does (which checks that
    they belong together). @return: what to show of them."""
    if config.tls is None:
        return None
    from cryptography import x509
    from mailgw.tls import TLSConfigError, TLSOptions
    try:
        TLSOptions.from_config(config.tls)
    except TLSConfigError as e:
        raise ValueError(str(e)) from None
    with open(config.tls.certificate, "rb") as f:
        not_after = x509.load_pem_x509_certificates(f.read())[0].not_valid_after_utc
    return {"certificate": config.tls.certificate, "private_key": config.tls.private_key,
            "min_version": config.tls.min_version,
            "expires": iso8601(not_after.timestamp()),
            "expired": not_after.timestamp() <= time.time()}


def _check_endpoints(reactor, config) -> None:
    """Parse every endpoint the gateway would listen on (nothing listens)."""
    from mailgw.listeners import StartupError, parse_endpoint
    endpoints = [(listener.endpoint, f"listeners[{i}].endpoint")
                 for i, listener in enumerate(config.listeners)]
    if config.http_api is not None:
        endpoints.append((config.http_api.endpoint, "http_api.endpoint"))
    if config.metrics.endpoint:
        endpoints.append((config.metrics.endpoint, "metrics.endpoint"))
    if config.web is not None:
        endpoints.append((config.web.endpoint, "web.endpoint"))
    for description, where in endpoints:
        try:
            parse_endpoint(reactor, description, where)
        except StartupError as e:  # a SystemExit, worded for twistd
            raise ValueError(str(e.code).removeprefix("mailgw: ")) from None


def _directory_exists_or_creatable(path: str, setting: str) -> bool:
    """@return: whether C{path} is a directory already (C{False}: the
    gateway can create it, as far as this user can tell).
    @raise ValueError: it is something else, or cannot be created."""
    if os.path.isdir(path):
        return True
    if os.path.lexists(path):
        raise ValueError(f"{setting} {path}: not a directory")
    _creatable(path, setting)
    return False


def _creatable(path: str, setting: str) -> None:
    """Check that C{path}, which does not exist, can be created (with any
    folders missing on the way).

    @raise ValueError: a file is in the way, or the folder it would go in is
        not writable by this user."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{setting} {path}: cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{setting} {path}: cannot be created: {parent} is not writable")


async def _check_database(reactor, config) -> dict:
    """Open the store, read its schema version and close it. A SQLite file
    that does not exist yet is not created (the gateway creates it, as its
    own user, at start): its folder is checked instead."""
    from mailgw.config import sqlite_path
    from mailgw.interfaces import StoreUnavailable
    from mailgw.store import open_store
    from mailgw.store.base import schema_files
    from mailgw.store.postgres import redact
    url = config.database.url
    engine = "sqlite" if url.startswith("sqlite:") else "postgresql"
    latest = schema_files(engine)[-1][0]
    shown = {"url": redact(url), "engine": engine, "schema_version": 0,
             "latest_schema_version": latest}
    path = sqlite_path(url) if engine == "sqlite" else None
    if path not in (None, ":memory:") and not os.path.lexists(path):
        _creatable(path, "database.url")
        return dict(shown, schema="created at start")
    store = open_store(url, reactor, config.database.pool_size,
                       store_timeout=config.database.store_timeout)
    try:
        await store.start()
        version = await store.schema_version()
    except StoreUnavailable as e:
        why = _without_secrets(str(e), url)
        where = "" if shown["url"] in why else f" {shown['url']}"
        raise StoreUnavailable(f"cannot open the database{where}: {why}") from None
    finally:
        await store.close()
    if version > latest:
        raise ValueError(f"the database's schema version {version} is newer than this "
                         f"mailgw's ({latest}): upgrade mailgw")
    return dict(shown, schema_version=version,
                schema="current" if version == latest else "upgraded at start")


def _without_secrets(text: str, url: str) -> str:
    """C{text} with the URL's password (in its user part or its query)
    replaced by C{***}, should a driver's message ever quote it."""
    parts = urlsplit(url)
    hidden = [parts.password or ""] + parse_qs(parts.query).get("password", [])
    for secret in hidden + [unquote(h) for h in hidden]:
        if secret:
            text = text.replace(secret, "***")
    return text


def _check_text(data: dict) -> str:
    """The readable form of C{config check}'s answer."""
    def line(name, value):
        return f"{name + ':':<17}{value}"
    api, tls, database, spool = (data["http_api"], data["tls"], data["database"],
                                 data["spool_directory"])
    listeners = table(LISTENER_COLUMNS, data["listeners"], "none")
    workers = data["workers"]
    lines = [f"config OK: {data['config']}", line("hostname", data["hostname"]),
             line("workers", "1 process" if workers == 1 else
                  f"{workers} processes serving SMTP (twistd's and {workers - 1} workers)"),
             "listeners:", "\n".join("  " + row for row in listeners.splitlines())]
    lines.append(line("http_api", "off" if api is None else
                      f"{api['endpoint']} (https: {cell(api['tls'])}, max connections "
                      f"{api['max_connections']}, per IP {api['max_connections_per_ip']})"))
    lines.append(line("metrics", data["metrics"] or "off"))
    web = data["web"]
    lines.append(line("web", "off" if web is None else
                      f"{web['endpoint']} (https: {cell(web['tls'])})"))
    if tls is not None:
        state = "EXPIRED" if tls["expired"] else "expires"
        lines.append(line("tls", f"{tls['certificate']} ({state} {tls['expires']}), "
                                 f"TLS {tls['min_version']} and up"))
    else:
        lines.append(line("tls", "none"))
    schema = {"current": f"schema version {database['schema_version']}, current",
              "upgraded at start": f"schema version {database['schema_version']}, "
                                   f"upgraded to {database['latest_schema_version']} at start",
              "created at start": "not created yet: created at start"}[database["schema"]]
    lines.append(line("database", f"{database['url']} ({schema})"))
    lines.append(line("spool_directory", f"{spool['path']} "
                      f"({'exists' if spool['exists'] else 'created at start'})"))
    lines.append(line("relay", relay_text(data["relay"])))
    lines.append(line("webhooks", webhooks.settings_text(data["webhooks"])))
    return "\n".join(printable(text) for text in lines)
