"""Signing in to the web interface, signing out, and setting a password
through a link of `mailgw user` (docs/web.md, "Security model").

A failed sign-in is counted in the failure throttle SMTP AUTH and the HTTP
API count in (L{mailgw.auth.guard.AuthenticationGuard}): a locked-out address
gets 429 whatever the password. Each sign-in makes a new session.
"""
from __future__ import annotations

from twisted.logger import Logger

from mailgw.auth import passwords
from mailgw.interfaces import NotFound
from mailgw.web.ui import sessions
from mailgw.web.ui.app import Page, Redirect, Refused

log = Logger()


def safe_next(target: str) -> str:
    """A local path to go to after sign-in (never another site)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


async def home(web, visit):
    return Redirect("/orgs")


async def login_form(web, visit):
    if visit.user is not None:
        return Redirect(safe_next(visit.field("next", "/")))
    return Page("login.html", {"email": "", "next": safe_next(visit.field("next", "/")),
                               "error": None})


async def login(web, visit):
    email = visit.field("email").lower()
    password = visit.form.get("password", "")
    target = safe_next(visit.field("next", "/"))
    if web.guard.locked(visit.ip):
        _count_login(web, "locked_out")
        raise Refused(429, "locked_out", "Too many failed sign-ins from your address. "
                                         "Try again later.")
    try:
        user = await web.store.get_user(email) if email else None
    except NotFound:
        user = None
    hashed = user.password_hash if user is not None else None
    if not await passwords.verify_password(web.clock, hashed, password):
        _count_login(web, "failed")
        if web.guard.failed(visit.ip, visit.trace, "web sign-in", email):
            raise Refused(429, "locked_out", "Too many failed sign-ins from your address. "
                                             "Try again later.")
        if web.metrics is not None:
            web.metrics.web_refusals.labels("login_failed").inc()
        return Page("login.html", {"email": email, "next": target,
                                   "error": "Wrong e-mail address or password."}, 401)
    token, csrf = passwords.new_token(), passwords.new_token()
    lifetime = web.settings.session_lifetime
    await web.store.add_user_token(user.id, passwords.token_digest(token), "session",
                                   web.clock.seconds() + lifetime, csrf)
    if visit.session_digest:  # a new session at every sign-in (no fixation)
        await web.store.remove_user_token(visit.session_digest)
    visit.set_cookies.append(web.cookie(sessions.SESSION_COOKIE, token, int(lifetime)))
    visit.set_cookies.append(web.cookie(sessions.LOGIN_CSRF_COOKIE, "", 0))
    _count_login(web, "success")
    log.info("[{trace}] web: {email} signed in from {ip}", trace=visit.trace,
             email=user.email, ip=visit.ip)
    return Redirect(target)


def _count_login(web, result: str) -> None:
    if web.metrics is not None:
        web.metrics.web_logins.labels(result).inc()


async def logout(web, visit):
    if visit.session_digest:
        await web.store.remove_user_token(visit.session_digest)
    visit.set_cookies.append(web.cookie(sessions.SESSION_COOKIE, "", 0))
    log.info("[{trace}] web: {email} signed out", trace=visit.trace, email=visit.user.email)
    return Redirect("/login", "Signed out.")


async def _link_user(web, token: str):
    try:
        found = await web.store.user_token(passwords.token_digest(token), "set_password")
    except NotFound:
        raise Refused(404, "link", "This link is not valid: it was used already or has "
                                   "expired. Ask an admin for a new one.") from None
    return found.user


async def set_password_form(web, visit):
    token = visit.field("token")
    user = await _link_user(web, token)
    return Page("set_password.html", {"email": user.email, "token": token, "error": None})


async def set_password(web, visit):
    token = visit.field("token")
    user = await _link_user(web, token)
    password = visit.form.get("password", "")
    problem = passwords.password_problem(password)
    if problem is None and password != visit.form.get("confirm", ""):
        problem = "The two passwords differ."
    if problem:
        return Page("set_password.html", {"email": user.email, "token": token,
                                          "error": problem}, 400)
    hashed = await passwords.hash_password(web.clock, password)
    user = await web.store.set_password_with_token(passwords.token_digest(token), hashed)
    log.info("[{trace}] web: {email} set a password through a link", trace=visit.trace,
             email=user.email)
    return Redirect("/login", "Password set. Sign in with it.")
