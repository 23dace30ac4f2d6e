"""The web interface as a twisted.web site and its listener (docs/web.md).

The site is the HTTP API's kind of C{Site} (L{mailgw.web.limits.APISite}):
the same header, body and idle timeouts and request size limit, here sized
for forms; the listener caps connections as the API's does and serves HTTPS
with the gateway's certificate when C{web.tls} is true.
"""
from __future__ import annotations

from twisted.web.iweb import IAccessLogFormatter
from zope.interface import provider

from mailgw.listeners import ListenerService
from mailgw.web.limits import APISite, http_listener
from mailgw.web.ui.app import WebInterface
from mailgw.web.ui.pages import web_settings
from mailgw.web.ui.routes import ROUTES

#: the largest form accepted (a form's fields are short)
MAX_FORM = 64 * 1024
#: connections to the interface: a few people, not the internet's clients
MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP = 200, 50


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return "".join(c if c.isprintable() and c != '"' else "?" for c in str(value))


@provider(IAccessLogFormatter)
def access_log_line(timestamp, request) -> str:
    """The access log's line for a request: twisted.web's combined format
    without the query string and the referrer, which may carry a
    set-password link's token (docs/web.md)."""
    ip = getattr(request.getClientAddress(), "host", "-")
    agent = request.getHeader(b"user-agent") or b"-"
    return (f'"{_text(ip)}" - - {timestamp} "{_text(request.method)} '
            f'{_text(request.path)} {_text(request.clientproto)}" {request.code} '
            f'{request.sentLength or "-"} "-" "{_text(agent)[:200]}"')


def build_web_site(store, guard, config, reactor, metrics=None, lookup=None,
                   after_change=None, bound_ports=None) -> APISite:
    """The web interface's C{Site} for C{config.web}.

    @param store: the gateway's L{mailgw.interfaces.IStore}.
    @param guard: the L{mailgw.auth.guard.AuthenticationGuard} of SMTP AUTH
        and the HTTP API: failed sign-ins count in the same throttle.
    @param lookup: the L{mailgw.domains.lookup.DomainLookup} for the domain
        pages' Check and Verify buttons, or None.
    @param after_change: called after every change made in the pages (the
        gateway's L{mailgw.store.cache.CachingDirectory.forget}), or None.
    @param bound_ports: returns the SMTP listeners' bound ports (for the
        connection settings shown), or None.
    """
    root = WebInterface(store, guard, web_settings(config, bound_ports), reactor, ROUTES, metrics, lookup,
                        after_change)
    site = APISite(root, max_message_size=MAX_FORM, idle_timeout=60.0, header_timeout=30.0,
                   body_timeout=60.0, metrics=metrics, reactor=reactor,
                   log_formatter=access_log_line)
    site.displayTracebacks = False
    site.noisy = False
    return site


def web_listener_service(site, config, tls_options, reactor,
                         metrics=None) -> ListenerService:
    """The service serving C{site} on C{config.web.endpoint}, as HTTPS with
    C{tls_options} (the gateway's L{mailgw.tls.TLSOptions}) when C{web.tls}."""
    web = config.web
    return http_listener(site, endpoint=web.endpoint, setting="web.endpoint", tls=web.tls,
                         tls_options=tls_options, max_connections=MAX_CONNECTIONS,
                         max_connections_per_ip=MAX_CONNECTIONS_PER_IP, reactor=reactor,
                         metrics=metrics, what="web interface")
