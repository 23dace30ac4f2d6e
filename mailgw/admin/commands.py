"""The verbs of the ``mailgw`` command: one coroutine each, from parsed
arguments and an open store to an L{Output}.

Arguments have been checked before a verb runs (see L{mailgw.admin.cli}):
permalinks are valid, C{args.server} is an C{(org, server)} pair, and a
credential's C{args.key} is the key to store. A verb only talks to the store
through L{mailgw.interfaces.IAdmin}, L{mailgw.interfaces.IQueue} and
L{mailgw.interfaces.IRelayQueue}; every
failure it meets (C{NotFound}, C{Conflict}, ...) becomes the one-line error.
"""
from __future__ import annotations

from mailgw.admin.output import (
    ATTEMPT_COLUMNS, CREDENTIAL_COLUMNS, DOMAIN_COLUMNS, ENTRY_COLUMNS, LOCKOUT_COLUMNS,
    ORGANIZATION_COLUMNS, SERVER_COLUMNS, Output, attempt_json, credential_json, domain_json,
    entry_json, fields, lockout_json, message_headers, organization_json, printable,
    server_json, table,
)
from mailgw.auth.throttle import throttle_key

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
    return _one(domain_json(domain))


async def domain_list(store, args) -> Output:
    domains = await store.list_domains(server=args.server, organization=args.org)
    return _many([domain_json(d) for d in domains], DOMAIN_COLUMNS, "no domains")


async def domain_verify(store, args) -> Output:
    domain = await store.set_domain_verified(args.id, args.verified)
    return _one(domain_json(domain))


async def domain_remove(store, args) -> Output:
    await store.remove_domain(args.id)
    return _removed("domain", args.id)


# -- credentials ---------------------------------------------------------

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


def check_queue_show(args) -> None:
    if args.raw and args.json:
        raise ValueError("--raw writes the message itself; leave out --json")


async def queue_show(store, args) -> Output:
    entry = await store.get_entry(args.id)
    if args.raw:
        return Output(raw=await store.read_body(entry.message_id))
    # the header section is within the first stored piece: no need to read
    # (maybe 50 MB of) the whole message
    head = await store.read_body_chunk(entry.message_id, 0) or b""
    headers = message_headers(head).decode("utf-8", "replace").replace("\r\n", "\n")
    attempts = [attempt_json(a) for a in await store.get_attempts(entry.id)]
    data = dict(entry_json(entry), headers=headers, delivery_attempts=attempts)
    text = fields(entry_json(entry))
    text += "\n\ndelivery attempts:\n" + table(ATTEMPT_COLUMNS, attempts, "  none yet")
    text += "\n\n" + printable(headers)
    return Output(data, text)


async def queue_release(store, args) -> Output:
    """A held entry back to the queue, due now."""
    return _one(entry_json(await store.release_entry(args.id)))


async def queue_retry(store, args) -> Output:
    """A failed (or waiting) entry due now."""
    return _one(entry_json(await store.retry_entry(args.id)))


async def queue_remove(store, args) -> Output:
    await store.remove_entry(args.id)
    return _removed("queue entry", args.id)


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
