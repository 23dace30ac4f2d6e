"""The admins' page of users (docs/web.md, "Users"): who may sign in, and
invitations. An admin adds a user (an admin, or a member of some
organizations) and hands them the one-time set-password link shown once on
the page, as `mailgw user add --link` prints it; a forgotten password gets a
new link the same way. Removing users is the command line's (`mailgw user
remove`).
"""
from __future__ import annotations

import re

from twisted.logger import Logger

from mailgw.auth import passwords
from mailgw.interfaces import NotFound
from mailgw.web.ui.app import Page, Redirect, Refused, conflict_text

log = Logger()
#: an address as `mailgw user add` accepts it
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\Z")


def _admin_only(visit) -> None:
    if not visit.user.admin:
        # not even its existence is told to others
        raise NotFound("the users page is an admin's")


async def users(web, visit):
    _admin_only(visit)
    return Page("users.html", {"users": await web.store.list_users(),
                               "organizations": await web.store.list_organizations(),
                               "invited": None})


async def user_add(web, visit):
    _admin_only(visit)
    email = visit.field("email").lower()
    if not EMAIL_RE.match(email):
        return Redirect("/users", "That is not an e-mail address.", error=True)
    try:  # one field per organization ticked
        orgs = [o.decode("ascii") for o in visit.request.args.get(b"organization", [])]
    except UnicodeDecodeError:
        raise Refused(400, "encoding", "The form was not sent as expected.") from None
    try:
        user = await web.store.add_user(email, admin="admin" in visit.form, organizations=orgs)
    except ValueError as e:  # Conflict: the address has a user
        return Redirect("/users", conflict_text(e), error=True)
    log.info("[{trace}] web: {email} added user {user}", trace=visit.trace,
             email=visit.user.email, user=user.email)
    return await _invited(web, visit, user, "added")


async def user_link(web, visit):
    _admin_only(visit)
    user = await web.store.get_user(int(visit.params["user"]))
    log.info("[{trace}] web: {email} made a set-password link for {user}",
             trace=visit.trace, email=visit.user.email, user=user.email)
    return await _invited(web, visit, user, "given a new set-password link")


async def _invited(web, visit, user, what: str):
    token = passwords.new_token()
    lifetime = web.settings.link_lifetime
    await web.store.add_user_token(user.id, passwords.token_digest(token), "set_password",
                                   web.clock.seconds() + lifetime)
    link = f"{_site_url(web, visit)}/set-password?token={token}"
    return Page("users.html", {"users": await web.store.list_users(),
                               "organizations": await web.store.list_organizations(),
                               "invited": {"email": user.email, "what": what, "link": link,
                                           "hours": f"{lifetime / 3600:g}"}})


def _site_url(web, visit) -> str:
    """Where the link's reader reaches this interface: C{[web] public_url},
    else the address this admin used."""
    if web.settings.public_url:
        return web.settings.public_url.rstrip("/")
    host = (visit.request.getHeader(b"host") or b"127.0.0.1").decode("latin-1")
    return f"{'https' if web.settings.secure else 'http'}://{host}"
