"""The ``mailgw`` operator command: organizations, servers, domains,
credentials, the queue, webhooks, the failure throttle's lock-outs and the schema, read
from and written to the store named by the same config file the gateway runs
with; and ``config check``, which checks that config as the gateway would use
it.

``main`` parses the command line, checks the arguments before the store is
opened (so a typo changes nothing), then runs one verb of
L{mailgw.admin.commands} under C{twisted.internet.task.react} and prints its
result readable or, with ``--json``, for scripts. Every expected failure is one
line on stderr and exit status 1; usage errors exit 2 (argparse).
"""
from __future__ import annotations

import argparse
import configparser
import ipaddress
import json
import os
import sys
import traceback
from pathlib import Path

from mailgw.admin import commands as c, webhooks
from mailgw.admin.output import Output
from mailgw.config import ConfigError, load_config
from mailgw.interfaces import StoreUnavailable
from mailgw.model import CREDENTIAL_TYPES, QUEUE_STATUSES, SERVER_MODES, generate_key, \
    valid_permalink

DEFAULT_CONFIG = "etc/mailgw.toml"

#: failures an operator can cause or fix; anything else is a bug and keeps its
#: traceback. (NotFound is a LookupError, Conflict a ValueError.)
EXPECTED = (ConfigError, LookupError, ValueError, StoreUnavailable, OSError)


# -- argument types and checks -------------------------------------------------

def on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"use on or off, not {text!r}")
    return text == "on"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}")
    return value


def limit_or_none(text: str) -> int | None:
    return None if text == "none" else positive_int(text)


def require_permalink(value: str) -> str:
    if not valid_permalink(value):
        raise ValueError(f"invalid permalink {value!r}: use a-z, 0-9 and -")
    return value


def server_ref(text: str) -> tuple[str, str]:
    """C{"org/server"} as a pair of valid permalinks."""
    org, slash, server = text.partition("/")
    if not slash or not org or not server or "/" in server:
        raise ValueError(f"invalid server {text!r}: use ORG/SERVER")
    return require_permalink(org), require_permalink(server)


def network_key(text: str) -> str:
    """An C{smtp-ip} key: an address or network, host bits masked off."""
    try:
        if "%" in text:  # a zone index names an interface, not a network
            raise ValueError(text)
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError("key must be a valid IPv4 or IPv6 address") from None


def check_credential_add(args) -> None:
    """Make C{args.key} the key to store: a network for C{smtp-ip}, else a
    fresh random key (never one typed by the operator)."""
    if args.type == "smtp-ip":
        if args.key is None:
            raise ValueError("--key is required for smtp-ip credentials")
        args.key = network_key(args.key)
    elif args.key is not None:
        raise ValueError(f"--key is only for smtp-ip credentials; "
                         f"{args.type} keys are generated")
    else:
        args.key = generate_key()


def check_arguments(args) -> None:
    """Validate and normalise the arguments every verb shares, then the verb's own.

    @raise ValueError: with the line to show the operator.
    """
    for name in ("permalink", "org"):
        if getattr(args, name, None) is not None:
            require_permalink(getattr(args, name))
    for permalink in getattr(args, "orgs", ()):
        require_permalink(permalink)
    if getattr(args, "server", None) is not None:
        args.server = server_ref(args.server)
    if args.check is not None:
        args.check(args)


# -- the parser ---------------------------------------------------------------

def _common() -> argparse.ArgumentParser:
    """Options accepted after any noun or verb too. SUPPRESS keeps a value
    given before the noun from being overwritten by the sub-parser's default."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print machine-readable JSON")
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="the config file")
    return common


class _Nouns:
    def __init__(self, parser, common):
        self._nouns = parser.add_subparsers(dest="noun", metavar="NOUN", required=True)
        self._common = common

    def noun(self, name, help):
        p = self._nouns.add_parser(name, help=help, parents=[self._common])
        verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
        return lambda *a, **kw: self._verb(verbs, *a, **kw)

    def _verb(self, verbs, name, run, help, check=None, schema=True, store=True,
              **defaults):
        """@param store: whether C{run} takes an open store, C{(store, args)},
        or opens what it needs itself, C{(reactor, config, args)}."""
        p = verbs.add_parser(name, help=help, parents=[self._common])
        p.set_defaults(run=run, check=check, needs_schema=schema, needs_store=store,
                       **defaults)
        return p


def _org_verbs(verb) -> None:
    p = verb("add", c.org_add, "add an organization")
    p.add_argument("permalink", metavar="PERMALINK")
    p.add_argument("--name", help="display name (default: the permalink)")
    verb("list", c.org_list, "list organizations")
    for name, suspended in (("suspend", True), ("unsuspend", False)):
        p = verb(name, c.org_suspend, f"{name} an organization", suspended=suspended)
        p.add_argument("permalink", metavar="PERMALINK")


def _server_verbs(verb) -> None:
    p = verb("add", c.server_add, "add a server to an organization")
    p.add_argument("server", metavar="ORG/SERVER")
    p.add_argument("--name", help="display name (default: the permalink)")
    p.add_argument("--allow-sender-header", action="store_true")
    p.add_argument("--privacy-mode", action="store_true")
    p.add_argument("--mode", choices=SERVER_MODES, default="live")
    p.add_argument("--send-limit", type=positive_int, metavar="N",
                   help="messages per hour (default: no limit)")
    p = verb("set", c.server_set, "change a server's settings", check=c.check_server_set)
    p.add_argument("server", metavar="ORG/SERVER")
    for flag in ("--allow-sender-header", "--privacy-mode"):
        p.add_argument(flag, type=on_off, metavar="on|off", default=argparse.SUPPRESS)
    p.add_argument("--mode", choices=SERVER_MODES, default=argparse.SUPPRESS)
    p.add_argument("--send-limit", type=limit_or_none, metavar="N|none",
                   default=argparse.SUPPRESS)
    p = verb("list", c.server_list, "list servers")
    p.add_argument("org", metavar="ORG", nargs="?")
    for name, suspended in (("suspend", True), ("unsuspend", False)):
        p = verb(name, c.server_suspend, f"{name} a server", suspended=suspended)
        p.add_argument("server", metavar="ORG/SERVER")


def _owner(p, required: bool) -> None:
    owner = p.add_mutually_exclusive_group(required=required)
    owner.add_argument("--server", metavar="ORG/SERVER")
    owner.add_argument("--org", metavar="ORG")


def _domain_verbs(verb) -> None:
    p = verb("add", c.domain_add, "add a domain", check=c.check_domain_add)
    p.add_argument("name", metavar="NAME")
    _owner(p, required=True)
    p.add_argument("--verified", action="store_true")
    p.add_argument("--use-for-any", action="store_true",
                   help="any From address is allowed (server-owned domains only)")
    p.add_argument("--ed25519", action="store_true",
                   help="also an Ed25519 DKIM key, a second signature (RFC 8463)")
    _owner(verb("list", c.domain_list, "list domains"), required=False)
    p = verb("verify", c.domain_verify_dns, "mark a domain verified once its ownership "
             "TXT record is published (see `domain dns`)", verified=True, lookup=True)
    p.add_argument("domain", metavar="NAME", type=c.domain_ref,
                   help="the domain's name, or its ID when several owners have that name")
    p.add_argument("--force", action="store_true",
                   help="mark it verified without looking the record up")
    verb("unverify", c.domain_verify, "mark a domain not verified",
         verified=False).add_argument("id", metavar="ID", type=int)
    p = verb("check", c.domain_check, "look up the records of `domain dns` and say which "
             "are OK, Missing or Invalid", lookup=True)
    p.add_argument("domain", metavar="NAME", type=c.domain_ref,
                   help="the domain's name, or its ID when several owners have that name")
    verb("remove", c.domain_remove, "remove a domain").add_argument(
        "id", metavar="ID", type=int)
    p = verb("dns", c.domain_dns, "print the DNS records to publish for a domain: "
             "ownership, SPF, DKIM keys and return path")
    p.add_argument("domain", metavar="NAME", type=c.domain_ref,
                   help="the domain's name, or its ID when several owners have that name")
    p = verb("rotate-dkim", c.domain_rotate_dkim, "give a domain a new DKIM key under a "
             "new selector; the old ones retire, still published, until --finish")
    p.add_argument("domain", metavar="NAME", type=c.domain_ref,
                   help="the domain's name, or its ID when several owners have that name")
    p.add_argument("--finish", action="store_true",
                   help="delete the retiring keys (their records may then go)")
    p.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa",
                   help="the key to rotate (default rsa); ed25519 on a domain without "
                        "one adds a second signature (RFC 8463)")


def _credential_verbs(verb) -> None:
    p = verb("add", c.credential_add, "add a credential; prints its key",
             check=check_credential_add)
    p.add_argument("server", metavar="ORG/SERVER")
    p.add_argument("--type", choices=CREDENTIAL_TYPES, required=True)
    p.add_argument("--name", default="", help="a label")
    p.add_argument("--key", metavar="NETWORK",
                   help="smtp-ip only: the client address or CIDR network")
    p.add_argument("--hold", action="store_true", help="hold mail sent with it")
    verb("list", c.credential_list, "list a server's credentials with their keys") \
        .add_argument("server", metavar="ORG/SERVER")
    for name, hold in (("hold", True), ("release", False)):
        p = verb(name, c.credential_hold, f"{name} mail sent with a credential", hold=hold)
        p.add_argument("id", metavar="ID", type=int)
    verb("remove", c.credential_remove, "remove a credential").add_argument(
        "id", metavar="ID", type=int)


#: what a queue verb's ID may be
QUEUE_REF_HELP = ("a queue entry id, or a message's queue id (the TOKEN of `queue list`, "
                  "as in `250 OK: queued as TOKEN` and the HTTP API's token)")


def _queue_verbs(verb) -> None:
    p = verb("list", c.queue_list, "list queue entries, oldest first")
    p.add_argument("--status", choices=QUEUE_STATUSES)
    p.add_argument("--server", metavar="ORG/SERVER")
    p.add_argument("--limit", type=positive_int, metavar="N")
    p = verb("show", c.queue_show, "show a queue entry, its delivery attempts and its "
             "message headers; or a message with every one of its entries",
             check=c.check_queue_show)
    p.add_argument("id", metavar="ID", help=QUEUE_REF_HELP)
    p.add_argument("--raw", action="store_true",
                   help="write the stored message bytes exactly")
    for name, run, help in (
            ("release", c.queue_release, "release a held entry (or every held entry of "
                                         "a message): queued, due now"),
            ("retry", c.queue_retry, "retry a failed or queued entry (or every one of a "
                                     "message) now"),
            ("remove", c.queue_remove, "remove an entry (and its message when it was "
                                       "the last recipient), or a whole message")):
        verb(name, run, help, check=c.check_queue_ref).add_argument(
            "id", metavar="ID", help=QUEUE_REF_HELP)


def _throttle_verbs(verb) -> None:
    verb("list", c.throttle_list, "list the lock-outs in force on every gateway node")
    p = verb("clear", c.throttle_clear, "lift a lock-out and forget the counted failures, "
             "on every gateway node", check=c.check_throttle_clear)
    p.add_argument("address", metavar="ADDRESS",
                   help="a client address, or an IPv6 network as `throttle list` shows it")


def package_version() -> str:
    """mailgw's version: the installed distribution's, else (run from a
    source tree that was never installed) the one C{setup.cfg} declares."""
    from importlib import metadata
    try:
        return metadata.version("mailgw")
    except metadata.PackageNotFoundError:
        pass
    parser = configparser.ConfigParser()
    parser.read(Path(__file__).resolve().parents[2] / "setup.cfg", encoding="utf-8")
    return parser.get("metadata", "version", fallback="unknown")


class _Version(argparse.Action):
    """C{--version}: the version is looked up only when asked for (reading
    the installed distributions' metadata costs tens of milliseconds, which
    every other command would pay)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"mailgw {package_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailgw", description="Administer a mailgw gateway's store.")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print mailgw's version and exit")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help=f"the config file (default: $MAILGW_CONFIG, "
                             f"else {DEFAULT_CONFIG})")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    nouns = _Nouns(parser, _common())
    nouns.noun("config", "the config file")(
        "check", c.config_check, "check the config as the gateway would use it (TLS "
        "files, endpoints, database, spool) and show what it would do", store=False)
    nouns.noun("db", "the database schema")("upgrade", c.db_upgrade,
                                             "apply the schema files not yet applied",
                                             schema=False)
    _org_verbs(nouns.noun("org", "organizations"))
    _server_verbs(nouns.noun("server", "mail servers of an organization"))
    _domain_verbs(nouns.noun("domain", "sender domains"))
    _credential_verbs(nouns.noun("credential", "SMTP and API credentials"))
    _queue_verbs(nouns.noun("queue", "accepted messages"))
    _throttle_verbs(nouns.noun("throttle", "authentication failure lock-outs"))
    from mailgw.admin.users import add_user_verbs
    add_user_verbs(nouns.noun("user", "users of the web interface"))
    webhooks.add_verbs(nouns.noun("webhook", "webhooks: Postal's events, signed, to a "
                                             "server's URLs"), positive_int)
    return parser


# -- running ------------------------------------------------------------------

def config_path(args) -> str:
    return args.config or os.environ.get("MAILGW_CONFIG") or DEFAULT_CONFIG


def fail(error: BaseException) -> int:
    if isinstance(error, OSError) and error.strerror:
        message = error.strerror + (f": {error.filename}" if error.filename else "")
    else:
        message = str(error) or type(error).__name__
    print(f"mailgw: {message}", file=sys.stderr)
    return 1


async def session(reactor, config, args) -> Output | int:
    """Open the store, bring its schema up to date, run the verb, close the
    store. @return: the verb's output, or the exit status after a failure."""
    from mailgw.store import open_store
    store = None
    try:
        if not args.needs_store:
            return await args.run(reactor, config, args)
        store = open_store(config.database.url, reactor, config.database.pool_size,
                           store_timeout=config.database.store_timeout)
        await store.start()
        if args.needs_schema:
            await store.upgrade()
        if getattr(args, "lookup", False):
            # the verbs that look records up do so on this reactor
            from mailgw.domains.lookup import domain_lookup
            args.lookup = domain_lookup(config, reactor)
        return await args.run(store, args)
    except EXPECTED as e:
        return fail(e)
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        if store is not None:
            await store.close()


def run_session(config, args) -> Output | int:
    from twisted.internet.task import react
    results = []

    async def main(reactor):
        results.append(await session(reactor, config, args))

    try:
        react(main)
    except SystemExit:
        pass
    return results[0] if results else 1


def emit(output: Output, as_json: bool) -> int:
    try:
        if output.raw is not None:
            sys.stdout.flush()
            sys.stdout.buffer.write(output.raw)
        elif as_json:
            print(json.dumps(output.data, indent=2))
        else:
            print(output.text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`); don't let the exit-time flush complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(config_path(args))
        # the throttle verbs name client keys as the gateways count them
        args.auth_throttle = config.auth_throttle
        # and `domain dns` prints the records the [dns] table shapes
        args.dns = config.dns
        # and `user add --link` links to the web interface
        args.web = config.web
        # and `webhook add` checks URLs as the gateways will
        args.webhooks = config.webhooks
        check_arguments(args)
    except EXPECTED as e:
        return fail(e)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    result = run_session(config, args)
    if isinstance(result, int):
        return result
    return emit(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
