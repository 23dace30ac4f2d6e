"""The ``mailgw user`` verbs: the people who may sign in to the web
interface (docs/web.md).

A password is read before the store is opened (from the terminal, twice, or
with C{--password-stdin} one line of standard input, for scripts) and only
its Argon2id hash is stored. C{--link} instead prints a one-time
set-password link, valid for C{[web] link_lifetime} seconds, which the person
opens in a browser. Passwords and links are never logged.
"""
from __future__ import annotations

import getpass
import re
import sys
import time

from mailgw.admin.output import Output, fields, table
from mailgw.auth import passwords

USER_COLUMNS = [("ID", "id"), ("EMAIL", "email"), ("ADMIN", "admin"),
                ("ORGANIZATIONS", "organizations"), ("PASSWORD", "password")]
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\Z")
#: the set-password page, below the interface's address
LINK_PATH = "/set-password?token="


def _shown(user) -> str:
    data = user_json(user)
    return fields(dict(data, organizations=", ".join(data["organizations"]) or "-"))


def user_json(user) -> dict:
    return {"id": user.id, "email": user.email, "admin": user.admin,
            "organizations": list(user.organizations),
            "password": "set" if user.has_password else "not set"}


def _read_password(args) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.email}: ")
        if getpass.getpass("the same again: ") != password:
            raise ValueError("the two passwords differ")
    else:
        raise ValueError("no terminal to ask for a password: give --password-stdin "
                         "(one line on standard input) or --link")
    problem = passwords.password_problem(password)
    if problem:
        raise ValueError(problem.rstrip(".").lower().replace("a password", "the password"))
    return password


def check_password_choice(args) -> None:
    """Validate C{args.email}; unless C{--link}, read the password now (before
    the store opens) and keep only its hash, in C{args.password_hash}."""
    args.email = args.email.strip().lower()
    if not EMAIL_RE.match(args.email):
        raise ValueError(f"invalid e-mail address {args.email!r}")
    args.password_hash = None
    if not args.link:
        args.password_hash = passwords.hash_password_now(_read_password(args))


def check_email(args) -> None:
    args.email = args.email.strip().lower()


def base_url(web) -> str:
    """Where the interface is reached: C{[web] public_url}, else its endpoint."""
    if web is None:
        return "http://WEB-INTERFACE"  # no [web] table: the operator fills it in
    if web.public_url:
        return web.public_url.rstrip("/")
    m = re.match(r"^(?:tcp6?|ssl):(?:port=)?(\d+)(?::.*interface=([^:]+))?", web.endpoint)
    host, port = (m.group(2) or "127.0.0.1", m.group(1)) if m else ("127.0.0.1", "8080")
    return f"{'https' if web.tls else 'http'}://{host}:{port}"


async def _password_or_link(store, args, user) -> Output:
    if args.password_hash is not None:
        user = await store.set_user_password(user.id, args.password_hash)
        return Output(user_json(user), _shown(user))
    token = passwords.new_token()
    lifetime = args.web.link_lifetime if args.web is not None else 86400.0
    await store.add_user_token(user.id, passwords.token_digest(token), "set_password",
                               time.time() + lifetime)
    link = base_url(args.web) + LINK_PATH + token
    data = dict(user_json(user), set_password_link=link)
    text = _shown(user) + (
        f"\nset-password link (once, within {lifetime / 3600:g} hours):\n  {link}")
    if args.web is None:
        text += "\nthe web interface is off: add a [web] table to the config (docs/web.md)"
    return Output(data, text)


async def user_add(store, args) -> Output:
    user = await store.add_user(args.email, admin=args.admin, organizations=args.orgs)
    return await _password_or_link(store, args, user)


async def user_passwd(store, args) -> Output:
    """A new password (or link); the user's sessions end."""
    user = await store.get_user(args.email)
    return await _password_or_link(store, args, user)


async def user_list(store, args) -> Output:
    rows = [user_json(u) for u in await store.list_users()]
    shown = [dict(r, organizations=",".join(r["organizations"]) or "-") for r in rows]
    return Output(rows, table(USER_COLUMNS, shown, "no users"))


async def user_remove(store, args) -> Output:
    await store.remove_user(args.email)
    return Output({"removed": "user", "email": args.email}, f"removed user {args.email}")


async def user_grant(store, args) -> Output:
    user = await store.grant_organization(args.email, args.org)
    return Output(user_json(user), _shown(user))


def add_user_verbs(verb) -> None:
    """The C{user} noun's verbs, on C{verb} (see L{mailgw.admin.cli})."""
    def password_options(p):
        choice = p.add_mutually_exclusive_group()
        choice.add_argument("--password-stdin", action="store_true",
                            help="read the password from one line of standard input")
        choice.add_argument("--link", action="store_true",
                            help="print a one-time set-password link instead")

    p = verb("add", user_add, "add a user of the web interface", check=check_password_choice)
    p.add_argument("email", metavar="EMAIL")
    p.add_argument("--admin", action="store_true", help="sees every organization")
    p.add_argument("--org", dest="orgs", action="append", default=[], metavar="PERMALINK",
                   help="an organization the user works in (repeat for more)")
    password_options(p)
    verb("list", user_list, "list users")
    p = verb("passwd", user_passwd, "set a user's password (ending their sessions)",
             check=check_password_choice)
    p.add_argument("email", metavar="EMAIL")
    password_options(p)
    p = verb("grant", user_grant, "make a user a member of an organization",
             check=check_email)
    p.add_argument("email", metavar="EMAIL")
    p.add_argument("org", metavar="PERMALINK")
    verb("remove", user_remove, "remove a user", check=check_email).add_argument(
        "email", metavar="EMAIL")
