"""Every refusal is visible (docs/operations.md): a connection over a cap and
a failed TLS handshake each leave one log line with the trace id and the
reason, and are counted by reason in mailgw_smtp_refused_connections."""
from __future__ import annotations

from OpenSSL import SSL
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.helpers import Harness, make_store, seed_tenancy
from tests.smtp.test_tls_state import FakeTLSOptions, TLSHarness


class RefusalLogTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.store = yield make_store(self)
        yield seed_tenancy(self.store)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, text):
        return [formatEvent(e) for e in self.events if text in formatEvent(e)]

    def refused(self, factory, reason):
        return factory.metrics.refused_connections.labels(reason)._value.get()

    def test_connection_caps(self):
        first = Harness(self, self.store, max_connections_per_ip=1, max_connections=2)
        first.connect()
        second = Harness(self, self.store)
        second.factory = first.factory
        self.assertEqual(second.connect()[0][:4], b"421 ")
        [line] = self.lines("refused:")
        self.assertRegex(line, r"^\[[A-Z0-9]{8}\] connection from 192\.0\.2\.7 refused: "
                               r"too many connections from this address$")
        other = Harness(self, self.store, client_ip="192.0.2.8")
        other.factory = first.factory
        other.connect()
        third = Harness(self, self.store, client_ip="192.0.2.9")
        third.factory = first.factory
        self.assertEqual(third.connect()[0][:4], b"421 ")
        self.assertTrue(self.lines("192.0.2.9 refused: too many connections")[0].endswith(
            "too many connections"))
        self.assertEqual(self.refused(first.factory, "too many connections from this address"), 1)
        self.assertEqual(self.refused(first.factory, "too many connections"), 1)

    @defer.inlineCallbacks
    def test_failed_tls_handshake(self):
        h = TLSHarness(self, self.store, tls_options=FakeTLSOptions())
        h.connect()
        yield h.lines("EHLO c", "STARTTLS")
        error = SSL.Error([("SSL routines", "", "unsupported protocol")])
        h.protocol.connectionLost(Failure(error))
        [line] = self.lines("TLS handshake failed")
        self.assertRegex(line, r"^\[[A-Z0-9]{8}\] TLS handshake failed: unsupported protocol$")
        self.assertEqual(self.refused(h.factory, "TLS handshake failed"), 1)

    @defer.inlineCallbacks
    def test_no_line_after_a_completed_handshake(self):
        h = TLSHarness(self, self.store, tls_options=FakeTLSOptions())
        h.connect()
        yield h.lines("EHLO c", "STARTTLS")
        h.protocol.handshakeCompleted()
        h.protocol.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(self.lines("TLS handshake failed"), [])


class NotReadyTests(unittest.TestCase):
    """Listeners bind before the store opens: meanwhile sessions are told to come back."""

    @defer.inlineCallbacks
    def setUp(self):
        self.store = yield make_store(self)
        yield seed_tenancy(self.store)

    def test_421_until_the_store_is_open(self):
        h = Harness(self, self.store)
        h.factory.ready = False
        self.assertEqual(h.connect(), [b"421 mx.mailgw.test Service not available, "
                                       b"try again later"])
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.factory.total, 1)
        h.protocol.connectionLost(None)
        self.assertEqual(h.factory.total, 0)
        h.factory.ready = True
        again = Harness(self, self.store)
        again.factory = h.factory
        self.assertTrue(again.connect()[0].startswith(b"220 "))
