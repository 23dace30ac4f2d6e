"""Where a webhook may be sent (docs/webhooks.md, "Private addresses").

A webhook's URL is chosen by a tenant; unchecked, the gateway would make
HTTP requests of the tenant's choosing to services that trust local peers:
loopback, private networks (RFC 1918, RFC 4193), link-local (cloud metadata
services live at 169.254.169.254), this node's own addresses and anything
else that is not globally reachable. Such URLs are refused when a webhook
is added and again when each request is sent: the host name is resolved,
every address it has is checked, and the request connects to the addresses
that were checked (never resolving the name a second time, which a DNS
answer with a short TTL could point elsewhere). C{[webhooks]
allow_private_addresses = true} lifts the check.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from twisted.internet import defer, threads

from mailgw.relay.destinations import is_local, parse


class RefusedURL(ValueError):
    """A webhook URL that may not be used; the text says why."""


class Unresolvable(Exception):
    """A webhook's host name has no address now (a DNS failure may pass:
    the request is retried)."""


@dataclass(frozen=True)
class WebhookURL:
    """A webhook URL taken apart: C{scheme} (http or https), C{host} (a
    name, or an address without brackets) and C{port}. The URL itself stays
    out of the repr (see L{shown_url})."""
    url: str = field(repr=False)
    scheme: str
    host: str
    port: int


def shown_url(url: str) -> str:
    """A webhook URL as log lines and errors show it: without its query
    string, where receivers often put a secret token."""
    head, sep, _ = str(url).partition("?")
    return head + ("?…" if sep else "")


def parse_url(url: str) -> WebhookURL:
    """C{url} checked for form: http or https, a host, no credentials.

    @raise RefusedURL: otherwise.
    """
    if not isinstance(url, str) or any(c.isspace() for c in url) or not url.isascii():
        raise RefusedURL(f"invalid webhook URL {shown_url(url)!r}: use an http:// or https:// "
                         "URL without spaces (IDNA-encode a non-ASCII host name)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise RefusedURL(f"invalid webhook URL {shown_url(url)!r}: the scheme must be http or https")
    if parts.username is not None or parts.password is not None:
        raise RefusedURL("invalid webhook URL: credentials in the URL would be shown by "
                         "`webhook list` and in logs; verify the signature instead")
    try:
        port = parts.port
    except ValueError:
        raise RefusedURL(f"invalid webhook URL {shown_url(url)!r}: bad port") from None
    host = parts.hostname
    if not host:
        raise RefusedURL(f"invalid webhook URL {shown_url(url)!r}: it has no host")
    return WebhookURL(url, parts.scheme, host,
                      port or (443 if parts.scheme == "https" else 80))


def refusal(address, own=frozenset()) -> str | None:
    """Why connecting to C{address} is refused (what kind of address it
    is), or C{None} when it may be used.

    @param own: this node's addresses (L{mailgw.relay.destinations.node_addresses}).
    """
    ip = parse(address)
    if ip is None:
        return "not an address"
    if is_local(ip, own):
        return "a local address (loopback, link-local, multicast or this node's)"
    if not ip.is_global:
        return "a private or reserved address"
    return None


def literal(host: str):
    """The address C{host} spells, or C{None} for a host name."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _lookup(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise Unresolvable(f"cannot resolve {host}: {e}") from None
    seen = []
    for info in infos:
        address = info[4][0]
        if address not in seen:
            seen.append(address)
    if not seen:
        raise Unresolvable(f"cannot resolve {host}: no address")
    return seen


def choose(host: str, addresses, allow_private: bool, own=frozenset()) -> list[str]:
    """The addresses to connect to (in the resolver's order), of those
    C{host} resolved to: all of them, once every one is checked.

    @raise RefusedURL: one of them is refused (a name with one private
        address is refused whole: which one a client gets is the DNS
        server's choice, not ours).
    """
    addresses = list(addresses)
    if not allow_private:
        for address in addresses:
            why = refusal(address, own)
            if why is not None:
                what = (f"{address} is {why}" if literal(host) is not None
                        else f"{host} resolves to {address}, {why}")
                raise RefusedURL(f"webhook destination refused: {what} "
                                 "([webhooks] allow_private_addresses is false)")
    return addresses


def check_now(target: WebhookURL, allow_private: bool, own=frozenset()) -> list[str]:
    """Resolve and check C{target} now, blocking (the command line).

    @return: the addresses a request may connect to, in order.
    @raise RefusedURL: it is refused.
    @raise Unresolvable: it has no address now.
    """
    if literal(target.host) is not None:
        return choose(target.host, [target.host], allow_private, own)
    return choose(target.host, _lookup(target.host, target.port), allow_private, own)


def check_later(target: WebhookURL, allow_private: bool, own=frozenset()):
    """L{check_now} in a thread (the look-up blocks).

    @return: Deferred firing with the addresses, or failing with L{RefusedURL}
        or L{Unresolvable}.
    """
    if literal(target.host) is not None:
        try:
            return defer.succeed(choose(target.host, [target.host], allow_private,
                                                own))
        except RefusedURL:
            return defer.fail()
    return threads.deferToThread(check_now, target, allow_private, own)
