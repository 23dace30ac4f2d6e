"""PROXY protocol on a listener: trusted networks only, v1 and v2 headers,
502 and close for anything else, and the announced address is the one the
gateway authenticates by (an smtp-ip credential matches the proxied client,
not the proxy)."""
from __future__ import annotations

import socket
import struct

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from mailgw.smtp.proxy_listener import ProxyProtocolFactory
from tests.helpers import Harness, make_store, seed_tenancy

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(source: str, dest: str = "192.0.2.1", sport=40000, dport=25) -> bytes:
    addresses = socket.inet_aton(source) + socket.inet_aton(dest) + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


class ProxyListenerTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.store = yield make_store(self)
        yield seed_tenancy(self.store)  # 198.51.100.0/24 is an smtp-ip credential of acme/other
        self.h = Harness(self, self.store)
        self.wrapper = ProxyProtocolFactory(self.h.factory, ["10.0.0.0/8", "::1/128"],
                                            self.h.clock, timeout=30)

    def connect(self, proxy_ip="10.1.2.3"):
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", proxy_ip, 5555))
        self.protocol = self.wrapper.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)
        self.addCleanup(self.protocol.connectionLost, None)

    @defer.inlineCallbacks
    def dialogue(self, data: bytes):
        self.protocol.dataReceived(data)
        yield self.h.store.settle()
        out = self.transport.value()
        self.transport.clear()
        return out.split(b"\r\n")[:-1]

    @defer.inlineCallbacks
    def check_proxied_client_authorised(self, header: bytes):
        self.connect()
        self.assertEqual(self.transport.value(), b"")  # no greeting before the header
        replies = yield self.dialogue(header)
        self.assertTrue(replies[0].startswith(b"220 "), replies)
        replies = yield self.dialogue(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@dest.example>\r\n")
        self.assertEqual(replies[-1], b"250 OK")
        avatar = self.protocol.wrappedProtocol.avatar
        self.assertEqual(avatar.identity.server.full_name, "acme/other")
        self.assertEqual(self.protocol.wrappedProtocol.client_ip, "198.51.100.9")

    def test_v1_header(self):
        return self.check_proxied_client_authorised(
            b"PROXY TCP4 198.51.100.9 192.0.2.1 40000 25\r\n")

    def test_v2_header(self):
        return self.check_proxied_client_authorised(v2_header("198.51.100.9"))

    @defer.inlineCallbacks
    def test_proxy_address_itself_is_not_authorised(self):
        self.connect()
        yield self.dialogue(b"PROXY TCP4 203.0.113.5 192.0.2.1 40000 25\r\n")
        replies = yield self.dialogue(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r@dest.example>\r\n")
        self.assertEqual(replies[-1], b"530 Authentication required")

    @defer.inlineCallbacks
    def test_header_and_commands_in_one_segment(self):
        self.connect()
        replies = yield self.dialogue(b"PROXY TCP4 198.51.100.9 192.0.2.1 1 25\r\nNOOP\r\n")
        self.assertEqual(replies[1:], [b"250 OK"])

    def test_untrusted_proxy_refused_at_once(self):
        self.connect(proxy_ip="192.0.2.99")
        self.assertEqual(self.transport.value(), b"502 Proxy Error\r\n")
        self.assertTrue(self.transport.disconnecting)

    @defer.inlineCallbacks
    def test_malformed_or_missing_header(self):
        for data in (b"EHLO client\r\n", b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n",
                     b"PROXY TCP4 1.1.1.1 1.1.1.1 1 2" + b" " * 120):
            self.connect()
            replies = yield self.dialogue(data)
            self.assertEqual(replies, [b"502 Proxy Error"], data)
            self.assertTrue(self.transport.disconnecting)

    def test_header_never_comes(self):
        self.connect()
        self.protocol.dataReceived(b"PROXY TCP4 ")
        self.h.clock.advance(31)
        self.assertEqual(self.transport.value(), b"502 Proxy Error\r\n")
        self.assertTrue(self.transport.disconnecting)

    @defer.inlineCallbacks
    def test_v2_local_keeps_proxy_address(self):
        self.connect()
        replies = yield self.dialogue(V2_SIGNATURE + bytes([0x20, 0x00, 0, 0]))
        self.assertTrue(replies[0].startswith(b"220 "))
        self.assertEqual(self.protocol.wrappedProtocol.client_ip, "10.1.2.3")
