"""The web interface's pages of organizations and servers, and each
server's credentials and domains (docs/web.md); sign-in is in
L{mailgw.web.ui.signin}, messages in L{mailgw.web.ui.queue}, the routes in
L{mailgw.web.ui.routes}.

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
import json
import re
from dataclasses import dataclass

from twisted.logger import Logger

from mailgw.domains import monitor, records
from mailgw.interfaces import NotFound
from mailgw.model import CREDENTIAL_TYPES, SERVER_MODES, generate_key, \
    valid_permalink
from mailgw.web.ui.app import Page, Redirect, Refused, conflict_text

log = Logger()

#: what the SMTP listeners offer (docs/smtp.md)
MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")


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
    #: the HTTP API's base URL, for api credentials; None: no [http_api]
    api_url: str | None = None
    #: C{[web] public_url} and C{link_lifetime}, for the links of the users page
    public_url: str = ""
    link_lifetime: float = 86400.0

    def shown_listeners(self) -> list[tuple]:
        """L{listeners} with the port each is bound to where known."""
        bound = self.bound_ports() if self.bound_ports is not None else []
        shown = []
        for i, (port, tls, auth_tls) in enumerate(self.listeners):
            if port == 0 and i < len(bound) and bound[i]:
                port = bound[i]
            shown.append((port, tls, auth_tls))
        return shown


def _api_url(config, host: str) -> str | None:
    api = config.http_api
    if api is None:
        return None
    m = re.match(r"^(?:tcp6?|ssl):(?:port=)?(\d+)", api.endpoint)
    port = f":{m.group(1)}" if m else ""
    return f"{'https' if api.tls else 'http'}://{host}{port}"


def web_settings(config, bound_ports=None) -> WebSettings:
    listeners = []
    for listener in config.listeners:
        m = re.match(r"^(?:tcp6?|ssl):(?:port=)?(\d+)", listener.endpoint)
        listeners.append((int(m.group(1)) if m else listener.endpoint, listener.tls,
                          listener.requires_tls_for_auth))
    host = config.web.smtp_host or config.hostname
    return WebSettings(secure=config.web.tls, session_lifetime=config.web.session_lifetime,
                       smtp_host=host, listeners=tuple(listeners), dns=config.dns,
                       bound_ports=bound_ports, api_url=_api_url(config, host),
                       public_url=config.web.public_url,
                       link_lifetime=config.web.link_lifetime)


# -- organizations and servers --------------------------------------------------

async def _organization(web, visit):
    permalink = visit.params["org"]
    if not visit.user.may_see(permalink):
        raise NotFound(f"organization {permalink} is not {visit.user.email}'s")
    for org in await web.store.list_organizations():
        if org.permalink == permalink:
            return org
    raise NotFound(f"no organization {permalink}")


async def server_of(web, visit):
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
    changed(visit, f"added organization {org.permalink}")
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
    changed(visit, f"{what} organization {org.permalink}")
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
    changed(visit, f"added server {server.full_name}")
    return Redirect(base_path(server) + "/credentials", f"Server {server.full_name} added.")


def base_path(server) -> str:
    return f"/orgs/{server.organization_permalink}/servers/{server.permalink}"


def changed(visit, what: str) -> None:
    log.info("[{trace}] web: {email} {what}", trace=visit.trace, email=visit.user.email,
             what=what)


async def server(web, visit):
    org, srv = await server_of(web, visit)
    return Page("server.html", {"org": org, "server": srv, "modes": SERVER_MODES,
                                "tab": "settings"})


async def server_settings(web, visit):
    org, srv = await server_of(web, visit)
    limit = visit.field("send_limit")
    mode = visit.field("mode", srv.mode)
    if mode not in SERVER_MODES or (limit and (not limit.isdigit() or int(limit) < 1)):
        return Redirect(base_path(srv), "The send limit is a whole number of messages per "
                                    "hour, at least 1 (empty: no limit).", error=True)
    srv = await web.store.update_server(
        org.permalink, srv.permalink, allow_sender_header="allow_sender_header" in visit.form,
        privacy_mode="privacy_mode" in visit.form, mode=mode,
        send_limit=int(limit) if limit else None)
    changed(visit, f"changed the settings of {srv.full_name}")
    return Redirect(base_path(srv), "Settings saved.")


async def server_suspend(web, visit, suspended: bool):
    org, srv = await server_of(web, visit)
    await web.store.update_server(org.permalink, srv.permalink, suspended=suspended)
    what = "suspended" if suspended else "unsuspended"
    changed(visit, f"{what} server {srv.full_name}")
    return Redirect(base_path(srv), f"Server {srv.full_name} {what}.")


# -- credentials ----------------------------------------------------------------

async def credentials(web, visit):
    org, srv = await server_of(web, visit)
    found = await web.store.list_credentials((org.permalink, srv.permalink))
    return Page("credentials.html", {
        "org": org, "server": srv, "tab": "credentials", "credentials": found,
        "types": CREDENTIAL_TYPES, "mechanisms": MECHANISMS,
        "smtp_users": (f"{org.permalink}/{srv.permalink}", f"{org.permalink}_{srv.permalink}"),
        "smtp_host": web.settings.smtp_host, "listeners": web.settings.shown_listeners(),
        "api_url": web.settings.api_url})


def _network(text: str) -> str:
    try:
        if "%" in text:
            raise ValueError(text)
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError("An smtp-ip credential needs an IPv4 or IPv6 address or "
                         "network, such as 192.0.2.0/24.") from None


async def credential_add(web, visit):
    org, srv = await server_of(web, visit)
    kind, name = visit.field("type"), visit.field("name")
    back = base_path(srv) + "/credentials"
    if kind not in CREDENTIAL_TYPES:
        return Redirect(back, "Choose smtp, smtp-ip or api.", error=True)
    try:
        key = _network(visit.field("network")) if kind == "smtp-ip" else generate_key()
    except ValueError as e:
        return Redirect(back, str(e), error=True)
    credential = await web.store.add_credential((org.permalink, srv.permalink), kind, key,
                                                name=name, hold="hold" in visit.form)
    changed(visit, f"added {kind} credential {credential.id} to {srv.full_name}")
    return Redirect(back, f"Added {kind} credential {name or credential.id}.")


async def _credential(web, visit):
    org, srv = await server_of(web, visit)
    wanted = int(visit.params["credential"])
    for credential in await web.store.list_credentials((org.permalink, srv.permalink)):
        if credential.id == wanted:
            return srv, credential
    raise NotFound(f"no credential {wanted} of {srv.full_name}")


async def credential_hold(web, visit, hold: bool):
    srv, credential = await _credential(web, visit)
    await web.store.set_credential_hold(credential.id, hold)
    what = "held" if hold else "released"
    changed(visit, f"{what} credential {credential.id} of {srv.full_name}")
    note = ("Mail sent with it is held until released." if hold
            else "Mail sent with it is queued again.")
    return Redirect(base_path(srv) + "/credentials",
                    f"Credential {credential.name or credential.id} {what}. {note}")


async def credential_remove_form(web, visit):
    srv, credential = await _credential(web, visit)
    return Page("confirm.html", {
        "title": "Remove credential", "server": srv, "tab": "credentials",
        "question": f"Remove the {credential.type} credential "
                    f"{credential.name or credential.id}? Clients using it can no longer "
                    f"send.",
        "action": f"{base_path(srv)}/credentials/{credential.id}/remove",
        "back": base_path(srv) + "/credentials", "button": "Remove"})


async def credential_remove(web, visit):
    srv, credential = await _credential(web, visit)
    await web.store.remove_credential(credential.id)
    changed(visit, f"removed credential {credential.id} of {srv.full_name}")
    return Redirect(base_path(srv) + "/credentials",
                    f"Credential {credential.name or credential.id} removed.")


# -- domains ----------------------------------------------------------------------

async def domains(web, visit):
    org, srv = await server_of(web, visit)
    own = await web.store.list_domains(server=(org.permalink, srv.permalink))
    shared = await web.store.list_domains(organization=org.permalink)
    return Page("domains.html", {"org": org, "server": srv, "tab": "domains",
                                 "domains": own, "org_domains": shared})


async def domain_add(web, visit):
    org, srv = await server_of(web, visit)
    back = base_path(srv) + "/domains"
    try:
        domain = await web.store.add_domain(visit.field("name"),
                                            server=(org.permalink, srv.permalink))
    except ValueError as e:  # an invalid name, or a Conflict
        return Redirect(back, conflict_text(e), error=True)
    changed(visit, f"added domain {domain.name} to {srv.full_name}")
    return Redirect(f"{back}/{domain.id}", f"Domain {domain.name} added: publish its "
                                           f"records, then verify it.")


async def _domain(web, visit):
    org, srv = await server_of(web, visit)
    wanted = int(visit.params["domain"])
    for domain in await web.store.list_domains(server=(org.permalink, srv.permalink)):
        if domain.id == wanted:
            return srv, domain
    raise NotFound(f"no domain {wanted} of {srv.full_name}")


async def domain(web, visit, checks=None):
    srv, found = await _domain(web, visit)
    _, published, _ = await records.records_to_publish(web.store, web.settings.dns, found.id)
    if checks is None:  # the last check kept (the periodic one, or a button's)
        found, kept = await web.store.dns_check_result(found.id)
        checks = json.loads(kept) if kept else None
    return Page("domain.html", {"server": srv, "org": None, "tab": "domains",
                                "domain": found, "records": published,
                                "checks": checks})


async def domain_check(web, visit):
    srv, found = await _domain(web, visit)
    if web.lookup is None:
        raise Refused(503, "no_dns", "DNS look-ups are not available here.")
    try:
        rows = await monitor.check_and_keep(web.store, web.lookup, web.settings.dns, found.id)
    except NotFound:
        raise
    except LookupError as e:  # the DNS server did not answer
        return Redirect(f"{base_path(srv)}/domains/{found.id}", str(e), error=True)
    return await domain(web, visit, checks=rows)


async def domain_verify(web, visit):
    srv, found = await _domain(web, visit)
    force = "force" in visit.form
    back = f"{base_path(srv)}/domains/{found.id}"
    if force:
        _require_admin(visit, "mark a domain verified without its DNS record")
    elif web.lookup is None:
        raise Refused(503, "no_dns", "DNS look-ups are not available here.")
    try:
        if force:
            await web.store.set_domain_verified(found.id, True)
        else:
            await records.verify_through_dns(web.store, web.lookup, found.id)
    except NotFound:
        raise
    except (ValueError, LookupError) as e:
        return Redirect(back, str(e), error=True)
    changed(visit, f"verified domain {found.name} of {srv.full_name}"
                    + (" without DNS" if force else ""))
    return Redirect(back, f"Domain {found.name} is verified.")


async def domain_remove(web, visit):
    srv, found = await _domain(web, visit)
    await web.store.remove_domain(found.id)
    changed(visit, f"removed domain {found.name} of {srv.full_name}")
    return Redirect(base_path(srv) + "/domains", f"Domain {found.name} removed.")
