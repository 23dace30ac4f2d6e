"""The web interface's pages: sign-in, organizations and servers, and each
server's credentials, domains and messages (docs/web.md).

Each handler is C{async (web, visit) -> Page | Redirect}, where C{web} is
the L{mailgw.web.ui.app.WebInterface} and C{visit} the
L{mailgw.web.ui.app.Visit}. Every object is reached through the
organization in the URL, and that organization must be one the user may see
(L{mailgw.model.User.may_see}): another organization's server, credential,
domain or message is "not found", whatever id the URL names. Every change is
one of the store operations the C{mailgw} command uses, so it applies to SMTP
and to the HTTP API at once.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from types import SimpleNamespace

from twisted.logger import Logger

from mailgw.interfaces import NotFound
from mailgw.model import CREDENTIAL_TYPES, QUEUE_STATUSES, SERVER_MODES, generate_key, \
    valid_permalink
from mailgw.web.messages import header_section
from mailgw.auth import passwords
from mailgw.web.ui import sessions
from mailgw.web.ui.app import Page, Redirect, Refused, conflict_text, route

log = Logger()

#: what the SMTP listeners offer (docs/smtp.md)
MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")
#: messages shown on a server's queue page
RECENT_MESSAGES = 200
_QUEUE_ID = re.compile(r"[A-Za-z0-9]{12}\Z")


@dataclass(frozen=True)
class WebSettings:
    """What the pages need of the config.

    @ivar secure: cookies are C{Secure} (the interface is served over TLS).
    @ivar smtp_host: the host name clients are told to connect to.
    @ivar listeners: C{(port, tls mode, AUTH needs TLS)} of each SMTP listener.
    @ivar dns: the L{mailgw.config.DNSConfig} shaping the records to publish.
    """
    secure: bool
    session_lifetime: float
    smtp_host: str
    listeners: tuple = ()
    dns: object = None
    #: the SMTP listeners' bound ports, in listener order (None: not bound),
    #: for listeners configured on port 0; or None
    bound_ports: object = None

    def shown_listeners(self) -> list[tuple]:
        """L{listeners} with the port each is bound to where known."""
        bound = self.bound_ports() if self.bound_ports is not None else []
        shown = []
        for i, (port, tls, auth_tls) in enumerate(self.listeners):
            if port == 0 and i < len(bound) and bound[i]:
                port = bound[i]
            shown.append((port, tls, auth_tls))
        return shown


def web_settings(config, bound_ports=None) -> WebSettings:
    listeners = []
    for listener in config.listeners:
        m = re.match(r"^(?:tcp6?|ssl):(?:port=)?(\d+)", listener.endpoint)
        listeners.append((int(m.group(1)) if m else listener.endpoint, listener.tls,
                          listener.requires_tls_for_auth))
    return WebSettings(secure=config.web.tls, session_lifetime=config.web.session_lifetime,
                       smtp_host=config.web.smtp_host or config.hostname,
                       listeners=tuple(listeners), dns=config.dns, bound_ports=bound_ports)


# -- sign-in -------------------------------------------------------------------

def _next(target: str) -> str:
    """A local path to go to after sign-in (never another site)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


async def home(web, visit):
    return Redirect("/orgs")


async def login_form(web, visit):
    if visit.user is not None:
        return Redirect(_next(visit.field("next", "/")))
    return Page("login.html", {"email": "", "next": _next(visit.field("next", "/")),
                               "error": None})


async def login(web, visit):
    email = visit.field("email").lower()
    password = visit.form.get("password", "")
    target = _next(visit.field("next", "/"))
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


# -- organizations and servers --------------------------------------------------

async def _organization(web, visit):
    permalink = visit.params["org"]
    if not visit.user.may_see(permalink):
        raise NotFound(f"organization {permalink} is not {visit.user.email}'s")
    for org in await web.store.list_organizations():
        if org.permalink == permalink:
            return org
    raise NotFound(f"no organization {permalink}")


async def _server(web, visit):
    org = await _organization(web, visit)
    server = await web.store.get_server(org.permalink, visit.params["server"])
    return org, server


def _require_admin(visit, what: str) -> None:
    if not visit.user.admin:
        raise Refused(403, "forbidden", f"Only an admin may {what}.")


async def organizations(web, visit):
    orgs = [o for o in await web.store.list_organizations() if visit.user.may_see(o.permalink)]
    return Page("organizations.html", {"organizations": orgs})


async def organization_add(web, visit):
    permalink, name = visit.field("permalink").lower(), visit.field("name")
    if not valid_permalink(permalink):
        return Redirect("/orgs", "A permalink is made of a-z, 0-9 and -.", error=True)
    org = await web.store.add_organization(permalink, name or permalink)
    if not visit.user.admin:
        await web.store.grant_organization(visit.user.id, org.permalink)
    _changed(visit, f"added organization {org.permalink}")
    return Redirect(f"/orgs/{org.permalink}", f"Organization {org.permalink} added.")


async def organization(web, visit):
    org = await _organization(web, visit)
    servers = await web.store.list_servers(org.permalink)
    return Page("organization.html", {"org": org, "servers": servers, "modes": SERVER_MODES})


async def organization_suspend(web, visit, suspended: bool):
    org = await _organization(web, visit)
    _require_admin(visit, "suspend an organization")
    await web.store.set_organization_suspended(org.permalink, suspended)
    what = "suspended" if suspended else "unsuspended"
    _changed(visit, f"{what} organization {org.permalink}")
    return Redirect(f"/orgs/{org.permalink}", f"Organization {org.permalink} {what}.")


async def server_add(web, visit):
    org = await _organization(web, visit)
    permalink, name = visit.field("permalink").lower(), visit.field("name")
    mode = visit.field("mode", "live")
    if not valid_permalink(permalink) or mode not in SERVER_MODES:
        return Redirect(f"/orgs/{org.permalink}", "A permalink is made of a-z, 0-9 and -.",
                        error=True)
    server = await web.store.add_server(org.permalink, permalink, name or permalink,
                                        mode=mode)
    _changed(visit, f"added server {server.full_name}")
    return Redirect(_base(server) + "/credentials", f"Server {server.full_name} added.")


def _base(server) -> str:
    return f"/orgs/{server.organization_permalink}/servers/{server.permalink}"


def _changed(visit, what: str) -> None:
    log.info("[{trace}] web: {email} {what}", trace=visit.trace, email=visit.user.email,
             what=what)


async def server(web, visit):
    org, srv = await _server(web, visit)
    return Page("server.html", {"org": org, "server": srv, "modes": SERVER_MODES,
                                "tab": "settings"})


async def server_settings(web, visit):
    org, srv = await _server(web, visit)
    limit = visit.field("send_limit")
    mode = visit.field("mode", srv.mode)
    if mode not in SERVER_MODES or (limit and (not limit.isdigit() or int(limit) < 1)):
        return Redirect(_base(srv), "The send limit is a whole number of messages per "
                                    "hour, at least 1 (empty: no limit).", error=True)
    srv = await web.store.update_server(
        org.permalink, srv.permalink, allow_sender_header="allow_sender_header" in visit.form,
        privacy_mode="privacy_mode" in visit.form, mode=mode,
        send_limit=int(limit) if limit else None)
    _changed(visit, f"changed the settings of {srv.full_name}")
    return Redirect(_base(srv), "Settings saved.")


async def server_suspend(web, visit, suspended: bool):
    org, srv = await _server(web, visit)
    await web.store.update_server(org.permalink, srv.permalink, suspended=suspended)
    what = "suspended" if suspended else "unsuspended"
    _changed(visit, f"{what} server {srv.full_name}")
    return Redirect(_base(srv), f"Server {srv.full_name} {what}.")


# -- credentials ----------------------------------------------------------------

async def credentials(web, visit):
    org, srv = await _server(web, visit)
    found = await web.store.list_credentials((org.permalink, srv.permalink))
    return Page("credentials.html", {
        "org": org, "server": srv, "tab": "credentials", "credentials": found,
        "types": CREDENTIAL_TYPES, "mechanisms": MECHANISMS,
        "smtp_users": (f"{org.permalink}/{srv.permalink}", f"{org.permalink}_{srv.permalink}"),
        "smtp_host": web.settings.smtp_host, "listeners": web.settings.shown_listeners()})


def _network(text: str) -> str:
    try:
        if "%" in text:
            raise ValueError(text)
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError("An smtp-ip credential needs an IPv4 or IPv6 address or "
                         "network, such as 192.0.2.0/24.") from None


async def credential_add(web, visit):
    org, srv = await _server(web, visit)
    kind, name = visit.field("type"), visit.field("name")
    back = _base(srv) + "/credentials"
    if kind not in CREDENTIAL_TYPES:
        return Redirect(back, "Choose smtp, smtp-ip or api.", error=True)
    try:
        key = _network(visit.field("network")) if kind == "smtp-ip" else generate_key()
    except ValueError as e:
        return Redirect(back, str(e), error=True)
    credential = await web.store.add_credential((org.permalink, srv.permalink), kind, key,
                                                name=name, hold="hold" in visit.form)
    _changed(visit, f"added {kind} credential {credential.id} to {srv.full_name}")
    return Redirect(back, f"Added {kind} credential {name or credential.id}.")


async def _credential(web, visit):
    org, srv = await _server(web, visit)
    wanted = int(visit.params["credential"])
    for credential in await web.store.list_credentials((org.permalink, srv.permalink)):
        if credential.id == wanted:
            return srv, credential
    raise NotFound(f"no credential {wanted} of {srv.full_name}")


async def credential_hold(web, visit, hold: bool):
    srv, credential = await _credential(web, visit)
    await web.store.set_credential_hold(credential.id, hold)
    what = "held" if hold else "released"
    _changed(visit, f"{what} credential {credential.id} of {srv.full_name}")
    note = ("Mail sent with it is held until released." if hold
            else "Mail sent with it is queued again.")
    return Redirect(_base(srv) + "/credentials",
                    f"Credential {credential.name or credential.id} {what}. {note}")


async def credential_remove_form(web, visit):
    srv, credential = await _credential(web, visit)
    return Page("confirm.html", {
        "title": "Remove credential", "server": srv, "tab": "credentials",
        "question": f"Remove the {credential.type} credential "
                    f"{credential.name or credential.id}? Clients using it can no longer "
                    f"send.",
        "action": f"{_base(srv)}/credentials/{credential.id}/remove",
        "back": _base(srv) + "/credentials", "button": "Remove"})


async def credential_remove(web, visit):
    srv, credential = await _credential(web, visit)
    await web.store.remove_credential(credential.id)
    _changed(visit, f"removed credential {credential.id} of {srv.full_name}")
    return Redirect(_base(srv) + "/credentials",
                    f"Credential {credential.name or credential.id} removed.")


# -- domains ----------------------------------------------------------------------

async def domains(web, visit):
    org, srv = await _server(web, visit)
    own = await web.store.list_domains(server=(org.permalink, srv.permalink))
    shared = await web.store.list_domains(organization=org.permalink)
    return Page("domains.html", {"org": org, "server": srv, "tab": "domains",
                                 "domains": own, "org_domains": shared})


async def domain_add(web, visit):
    org, srv = await _server(web, visit)
    back = _base(srv) + "/domains"
    try:
        domain = await web.store.add_domain(visit.field("name"),
                                            server=(org.permalink, srv.permalink))
    except ValueError as e:  # an invalid name, or a Conflict
        return Redirect(back, conflict_text(e), error=True)
    _changed(visit, f"added domain {domain.name} to {srv.full_name}")
    return Redirect(f"{back}/{domain.id}", f"Domain {domain.name} added: publish its "
                                           f"records, then verify it.")


async def _domain(web, visit):
    org, srv = await _server(web, visit)
    wanted = int(visit.params["domain"])
    for domain in await web.store.list_domains(server=(org.permalink, srv.permalink)):
        if domain.id == wanted:
            return srv, domain
    raise NotFound(f"no domain {wanted} of {srv.full_name}")


async def domain(web, visit, checks=None):
    from mailgw.admin import commands  # the same records as `mailgw domain dns`
    srv, found = await _domain(web, visit)
    records = await commands.domain_dns(web.store, SimpleNamespace(
        domain=found.id, dns=web.settings.dns))
    return Page("domain.html", {"server": srv, "org": None, "tab": "domains",
                                "domain": found, "records": records.data,
                                "checks": checks})


async def domain_check(web, visit):
    from mailgw.admin import commands  # the same checks as `mailgw domain check`
    srv, found = await _domain(web, visit)
    if web.lookup is None:
        raise Refused(503, "no_dns", "DNS look-ups are not available here.")
    try:
        result = await commands.domain_check(web.store, SimpleNamespace(
            domain=found.id, dns=web.settings.dns, lookup=web.lookup))
    except NotFound:
        raise
    except LookupError as e:  # the DNS server did not answer
        return Redirect(f"{_base(srv)}/domains/{found.id}", str(e), error=True)
    return await domain(web, visit, checks=result.data)


async def domain_verify(web, visit):
    from mailgw.admin import commands  # as `mailgw domain verify [--force]`
    srv, found = await _domain(web, visit)
    force = "force" in visit.form
    back = f"{_base(srv)}/domains/{found.id}"
    if force:
        _require_admin(visit, "mark a domain verified without its DNS record")
    elif web.lookup is None:
        raise Refused(503, "no_dns", "DNS look-ups are not available here.")
    try:
        await commands.domain_verify_dns(web.store, SimpleNamespace(
            domain=found.id, id=found.id, force=force, verified=True, lookup=web.lookup))
    except NotFound:
        raise
    except (ValueError, LookupError) as e:
        return Redirect(back, str(e), error=True)
    _changed(visit, f"verified domain {found.name} of {srv.full_name}"
                    + (" without DNS" if force else ""))
    return Redirect(back, f"Domain {found.name} is verified.")


async def domain_remove(web, visit):
    srv, found = await _domain(web, visit)
    await web.store.remove_domain(found.id)
    _changed(visit, f"removed domain {found.name} of {srv.full_name}")
    return Redirect(_base(srv) + "/domains", f"Domain {found.name} removed.")


# -- messages -------------------------------------------------------------------------

async def messages(web, visit):
    org, srv = await _server(web, visit)
    query, status = visit.field("q"), visit.field("status")
    if status not in QUEUE_STATUSES:
        status = ""
    if _QUEUE_ID.match(query):
        try:
            found = await web.store.message_for_server(srv.id, query.upper())
            entries = list(found.entries)
        except NotFound:
            entries = []
    else:
        entries = await web.store.list_entries(status=status or None, server=srv.full_name,
                                               limit=None if query else RECENT_MESSAGES,
                                               newest_first=True)
        if query:
            wanted = query.lower()
            entries = [e for e in entries
                       if wanted in e.mail_from.lower() or wanted in e.rcpt_to.lower()]
            entries = entries[:RECENT_MESSAGES]
    if status:
        entries = [e for e in entries if e.status == status]
    return Page("messages.html", {"org": org, "server": srv, "tab": "messages",
                                  "entries": entries, "query": query, "status": status,
                                  "statuses": QUEUE_STATUSES})


async def _message(web, visit):
    org, srv = await _server(web, visit)
    return srv, await web.store.message_for_server(srv.id, visit.params["token"].upper())


async def message(web, visit):
    srv, found = await _message(web, visit)
    message_id = found.entries[0].message_id
    data, seq = b"", 0
    while b"\r\n\r\n" not in data and seq < 64:
        chunk = await web.store.read_body_chunk(message_id, seq)
        if not chunk:
            break
        data, seq = data + chunk, seq + 1
    headers = header_section(data).decode("utf-8", "replace").replace("\r\n", "\n")
    return Page("message.html", {"org": None, "server": srv, "tab": "messages",
                                 "entries": found.entries, "attempts": found.attempts,
                                 "token": found.entries[0].token, "headers": headers})


_MESSAGE_ACTIONS = {"release": "release_message", "retry": "retry_message",
                    "remove": "remove_message"}


async def message_action(web, visit, action: str):
    srv, found = await _message(web, visit)
    token = found.entries[0].token
    back = f"{_base(srv)}/messages/{token}"
    try:
        changed = await getattr(web.store, _MESSAGE_ACTIONS[action])(token)
    except NotFound:
        raise
    except ValueError as e:  # Conflict: nothing to release or retry
        return Redirect(back, conflict_text(e), error=True)
    _changed(visit, f"{action}d message {token} of {srv.full_name} ({len(changed)} entries)")
    if action == "remove":
        return Redirect(_base(srv) + "/messages", f"Message {token} removed.")
    return Redirect(back, f"Message {token}: {len(changed)} entries {action}d.")


# -- the routes --------------------------------------------------------------------------

def _bound(fn, *args):
    async def handler(web, visit):
        return await fn(web, visit, *args)
    return handler


S = "/orgs/{org}/servers/{server}"

ROUTES = (
    route("GET", "/", home),
    route("GET", "/login", login_form, login=False),
    route("POST", "/login", login, login=False),
    route("POST", "/logout", logout),
    route("GET", "/set-password", set_password_form, login=False),
    route("POST", "/set-password", set_password, login=False),
    route("GET", "/orgs", organizations),
    route("POST", "/orgs", organization_add),
    route("GET", "/orgs/{org}", organization),
    route("POST", "/orgs/{org}/suspend", _bound(organization_suspend, True)),
    route("POST", "/orgs/{org}/unsuspend", _bound(organization_suspend, False)),
    route("POST", "/orgs/{org}/servers", server_add),
    route("GET", S, server),
    route("POST", S + "/settings", server_settings),
    route("POST", S + "/suspend", _bound(server_suspend, True)),
    route("POST", S + "/unsuspend", _bound(server_suspend, False)),
    route("GET", S + "/credentials", credentials),
    route("POST", S + "/credentials", credential_add),
    route("POST", S + "/credentials/{credential:int}/hold", _bound(credential_hold, True)),
    route("POST", S + "/credentials/{credential:int}/release", _bound(credential_hold, False)),
    route("GET", S + "/credentials/{credential:int}/remove", credential_remove_form),
    route("POST", S + "/credentials/{credential:int}/remove", credential_remove),
    route("GET", S + "/domains", domains),
    route("POST", S + "/domains", domain_add),
    route("GET", S + "/domains/{domain:int}", domain),
    route("POST", S + "/domains/{domain:int}/check", domain_check),
    route("POST", S + "/domains/{domain:int}/verify", domain_verify),
    route("POST", S + "/domains/{domain:int}/remove", domain_remove),
    route("GET", S + "/messages", messages),
    route("GET", S + "/messages/{token:token}", message),
    route("POST", S + "/messages/{token:token}/release", _bound(message_action, "release")),
    route("POST", S + "/messages/{token:token}/retry", _bound(message_action, "retry")),
    route("POST", S + "/messages/{token:token}/remove", _bound(message_action, "remove")),
)
