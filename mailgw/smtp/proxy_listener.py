"""PROXY protocol on a listener: a wrapper below TLS and SMTP that accepts
connections only from the trusted proxy networks, reads the v1 or v2 header,
and then lets the wrapped protocol start with the announced client address as
its peer. The SMTP side never knows a proxy was there; IP credentials, limits
and logs all see the real client.

Anything but a valid header from a trusted address gets ``502 Proxy Error``
(plain text, before any TLS) and the connection is closed.
"""
from __future__ import annotations

import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from mailgw.smtp import replies
from mailgw.smtp.proxy import ProxyError, parse_proxy_header

log = Logger()


def _address(host: str, port: int):
    ip = ipaddress.ip_address(host)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return IPv4Address("TCP", str(ip.ipv4_mapped), port)
    if ip.version == 6:
        return IPv6Address("TCP", str(ip), port)
    return IPv4Address("TCP", str(ip), port)


def _in_networks(host: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in networks)


class ProxyProtocolWrapper(ProtocolWrapper):
    def __init__(self, factory, wrappedProtocol):
        super().__init__(factory, wrappedProtocol)
        self._pending = b""
        self._peer = None
        self._started = False
        self._timer = None

    def makeConnection(self, transport):
        # Like ProtocolWrapper.makeConnection, but the wrapped protocol only
        # starts once the header has told us who the client is.
        from zope.interface import directlyProvides, providedBy
        directlyProvides(self, providedBy(transport))
        self.transport = transport
        self.connected = 1
        self.factory.registerProtocol(self)
        peer = transport.getPeer()
        if not _in_networks(getattr(peer, "host", ""), self.factory.trusted):
            log.warn("PROXY connection refused from untrusted {host}", host=peer.host)
            return self._refuse()
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._refuse)

    def _refuse(self):
        self.transport.write(replies.PROXY_ERROR.encode())
        self.transport.loseConnection()

    def dataReceived(self, data):
        if self._started:
            return self.wrappedProtocol.dataReceived(data)
        self._pending += data
        try:
            parsed = parse_proxy_header(self._pending)
        except ProxyError as e:
            log.warn("PROXY header refused: {why}", why=str(e))
            self._cancel_timer()
            return self._refuse()
        if parsed is None:
            return
        header, consumed = parsed
        rest, self._pending = self._pending[consumed:], b""
        if header.source is not None:
            self._peer = _address(*header.source)
        self._cancel_timer()
        self._started = True
        self.wrappedProtocol.makeConnection(self)
        if rest:
            self.wrappedProtocol.dataReceived(rest)

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def getPeer(self):
        return self._peer or self.transport.getPeer()

    def connectionLost(self, reason):
        self._cancel_timer()
        if self._started:
            return super().connectionLost(reason)
        self.factory.unregisterProtocol(self)


class ProxyProtocolFactory(WrappingFactory):
    protocol = ProxyProtocolWrapper
    noisy = False

    def __init__(self, wrappedFactory, trusted, clock, timeout: float = 30.0):
        super().__init__(wrappedFactory)
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted]
        self.clock = clock
        self.timeout = timeout
