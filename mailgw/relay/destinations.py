"""Local destinations: the addresses that delivery to MX hosts must not
connect to unless C{relay.allow_local_destinations} is on.

Whoever controls a recipient domain's DNS, or writes an address literal
(C{user@[127.0.0.1]}), chooses where the relay connects. Unchecked, the
relay would carry an SMTP dialogue of the sender's choosing to services that
trust local peers: loopback, link-local (cloud metadata services live at
169.254.169.254), the unspecified address (which Linux takes for this host),
multicast, and this node's own addresses. The operator's smarthost is not
judged here: the operator chose it.
"""
from __future__ import annotations

import ipaddress
import socket

#: "this host on this network" (RFC 1122 §3.2.1.3): a source address only,
#: never a destination
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")

#: documentation addresses (RFC 5737, RFC 3849): a UDP socket "connected"
#: to one shows the source address of the route there, and sends no packet
_PROBES = ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1"))


def parse(address) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """C{address} (text or an C{ipaddress} object) as the address to judge:
    an IPv4-mapped IPv6 address (C{::ffff:127.0.0.1}) as its IPv4 address,
    since connecting to it reaches that IPv4 address; a zone index dropped.

    @return: an C{ipaddress} object, or C{None} when it is not an address.
    """
    try:
        ip = ipaddress.ip_address(str(address).split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_local(address, own=frozenset()) -> bool:
    """Whether C{address} is local: loopback, link-local, unspecified (or
    the rest of 0.0.0.0/8), multicast, or one of C{own}.

    @param own: this node's addresses as L{parse} gives them (see
        L{node_addresses}).
    @return: C{True} for a local address, and for text that is no address
        at all (a connect would resolve it as a host name: never trusted).
    """
    ip = parse(address)
    if ip is None:
        return True
    return (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast
            or ip in _THIS_NETWORK or ip in own)


def node_addresses() -> frozenset:
    """This node's own addresses, as far as the standard library tells
    them: what its host name resolves to, and the source addresses of its
    routes to the Internet. It may block on a look-up: call it once, at start.

    @return: a frozenset of addresses as L{parse} gives them.
    """
    found = (parse(a) for a in _host_name_addresses() + _route_sources())
    return frozenset(ip for ip in found if ip is not None)


def _host_name_addresses() -> list[str]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except (OSError, UnicodeError):
        return []
    return [info[4][0] for info in infos]


def _route_sources() -> list[str]:
    found = []
    for family, probe in _PROBES:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe_socket:
                probe_socket.connect((probe, 9))
                found.append(probe_socket.getsockname()[0])
        except OSError:
            continue  # no such family or no route: nothing to learn
    return found
