"""STARTTLS and implicit TLS as the state machine sees them (docs/smtp.md §3, §4):
the injection guard, the reset to the greeting state, the advertisements,
and the handshake and DATA timeouts, over an in-memory transport with a Clock.
Real TLS on real sockets is in tests/e2e/test_tls.py."""
from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer

from tests.helpers import HOSTNAME, Harness, b64, make_store, seed_tenancy

KEY = "K" * 24


@implementer(ITLSTransport)
class StartTLSTransport(StringTransport):
    """Records startTLS; later bytes stand for what TLS decrypted."""
    tls_options = None

    def startTLS(self, options, normal=True):
        self.tls_options = options


@implementer(ISSLTransport)
class ImplicitTLSTransport(StringTransport):
    def getPeerCertificate(self):
        return None


class FakeTLSOptions:
    def server_options(self):
        return "the-current-options"


class TLSHarness(Harness):
    transport_class = StartTLSTransport

    def connect(self):
        from twisted.internet.address import IPv4Address
        peer = IPv4Address("TCP", self.client_ip, 40000)
        self.transport = self.transport_class(peerAddress=peer)
        self.protocol = self.factory.buildProtocol(peer)
        self.protocol.makeConnection(self.transport)
        self.testcase.addCleanup(self.protocol.connectionLost, None)
        return self.take()


class StartTLSTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.store = yield make_store(self)
        yield seed_tenancy(self.store)
        self.h = TLSHarness(self, self.store, auth_requires_tls=True,
                            tls_options=FakeTLSOptions())
        self.h.connect()

    @defer.inlineCallbacks
    def test_starttls_advertised_then_not(self):
        replies = yield self.h.lines("EHLO client")
        self.assertEqual(replies[-1], b"250 STARTTLS")
        self.assertFalse(any(b"AUTH" in r for r in replies))
        self.assertEqual((yield self.h.lines("STARTTLS")), [b"220 Ready to start TLS"])
        self.assertEqual(self.h.transport.tls_options, "the-current-options")
        replies = yield self.h.lines("EHLO client")
        self.assertFalse(any(b"STARTTLS" in r for r in replies))
        self.assertIn(b"250 AUTH CRAM-MD5 PLAIN LOGIN", replies)

    @defer.inlineCallbacks
    def test_pipelined_plaintext_after_starttls_is_discarded(self):
        replies = yield self.h.send(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<x@good.example>\r\n"
                                    b"RCPT TO:<v@dest.example>\r\n")
        self.assertEqual(replies[-1], b"220 Ready to start TLS")
        self.assertFalse(any(r.startswith(b"250 OK") for r in replies))
        self.assertEqual((yield self.h.lines("NOOP")), [b"250 OK"])

    @defer.inlineCallbacks
    def test_session_reset_after_handshake(self):
        yield self.h.lines("EHLO c", "STARTTLS")
        self.assertEqual((yield self.h.lines("MAIL FROM:<a@good.example>")),
                         [b"503 EHLO/HELO first please"])
        replies = yield self.h.lines("EHLO c", "AUTH PLAIN " + b64(f"\0u\0{KEY}"))
        self.assertEqual(replies[-1], b"235 Granted for acme/web")
        self.assertEqual(self.h.protocol.session.protocol_word, "ESMTPSA")

    @defer.inlineCallbacks
    def test_auth_before_tls_refused(self):
        replies = yield self.h.lines("EHLO c", "AUTH PLAIN " + b64(f"\0u\0{KEY}"))
        self.assertEqual(replies[-1], b"530 Must issue a STARTTLS command first")

    @defer.inlineCallbacks
    def test_starttls_twice_and_with_argument(self):
        self.assertEqual((yield self.h.lines("STARTTLS now")), [b"501 Syntax: STARTTLS"])
        yield self.h.lines("STARTTLS")
        self.assertEqual((yield self.h.lines("STARTTLS")), [b"503 TLS already active"])

    @defer.inlineCallbacks
    def test_handshake_timeout(self):
        yield self.h.lines("STARTTLS")
        self.h.clock.advance(29)
        self.assertFalse(self.h.transport.disconnecting)
        self.h.clock.advance(2)
        self.assertEqual(self.h.take(), [f"421 {HOSTNAME} Timeout, closing connection".encode()])
        self.assertTrue(self.h.transport.disconnected)

    @defer.inlineCallbacks
    def test_handshake_completed_cancels_timer(self):
        yield self.h.lines("STARTTLS")
        self.h.protocol.handshakeCompleted()
        self.h.clock.advance(31)
        self.assertFalse(self.h.transport.disconnecting)

    @defer.inlineCallbacks
    def test_data_timeout(self):
        yield self.h.lines("STARTTLS")
        self.h.protocol.handshakeCompleted()
        yield self.h.lines("EHLO c", "AUTH PLAIN " + b64(f"\0u\0{KEY}"),
                           "MAIL FROM:<a@good.example>", "RCPT TO:<b@dest.example>", "DATA")
        yield self.h.send(b"Subject: partial\r\n")
        self.h.clock.advance(299)
        yield self.h.send(b"more\r\n")
        # New bytes do not start the clock again: DATA has data_timeout plus
        # its 25 bytes at 1024 bytes/s from the 354.
        self.h.clock.advance(0.9)
        self.assertFalse(self.h.transport.disconnecting)
        self.h.clock.advance(0.2)
        self.assertEqual(self.h.take(), [f"421 {HOSTNAME} Timeout, closing connection".encode()])
        self.assertEqual((yield self.store.list_entries()), [])


class ImplicitTLSTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.store = yield make_store(self)
        yield seed_tenancy(self.store)
        self.h = TLSHarness(self, self.store, auth_requires_tls=True)
        self.h.transport_class = ImplicitTLSTransport
        self.h.connect()

    @defer.inlineCallbacks
    def test_no_starttls_and_auth_allowed(self):
        replies = yield self.h.lines("EHLO c")
        self.assertFalse(any(b"STARTTLS" in r for r in replies))
        self.assertIn(b"250 AUTH CRAM-MD5 PLAIN LOGIN", replies)
        self.assertEqual((yield self.h.lines("STARTTLS")), [b"503 TLS already active"])
        replies = yield self.h.lines("AUTH PLAIN " + b64(f"\0u\0{KEY}"))
        self.assertEqual(replies, [b"235 Granted for acme/web"])
