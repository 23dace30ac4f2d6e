"""The SMTP listeners' TLS layer (L{mailgw.smtp.tlslayer}) over real
sockets, with Python's C{ssl} module as the client: STARTTLS on a TCP
connection, large and pipelined writes, the close alert, and no write held
back for a later reactor turn."""
from __future__ import annotations

import socket
import ssl

from twisted.internet import defer, protocol, reactor, tcp, threads
from twisted.internet import ssl as tssl
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.protocols.basic import LineReceiver
from twisted.test.proto_helpers import StringTransport
from twisted.trial import unittest
from zope.interface import implementer

from mailgw.smtp import tlslayer
from mailgw.smtp.tlslayer import DirectTLSFactory, DirectTLSProtocol, start_tls
from tests.tlsclients import insecure_context, make_pair

BIG = 100_000


@implementer(IHandshakeListener)
class StartTLSLines(LineReceiver):
    """A line server: C{STARTTLS} starts TLS with L{start_tls}, C{BIG} answers
    with L{BIG} bytes, C{QUIT} closes; anything else is echoed."""

    def connectionMade(self):
        self.factory.protocols.append(self)
        self.handshakes = 0
        self.held = []
        self.buffered = []
        self.closed = defer.Deferred()
        self.sendLine(b"220 ready")

    def handshakeCompleted(self):
        self.handshakes += 1
        # the TLS layer: the transport (implicit TLS), or under it (STARTTLS)
        transport = self.transport
        self.layer = transport.protocol if isinstance(transport, tcp.Connection) else transport

    def sendLine(self, line):
        super().sendLine(line)
        # what a write left for a later turn of the reactor
        self.held += [c for c in reactor.getDelayedCalls()
                      if getattr(c.func, "__name__", "") == "_scheduledFlush"]
        tcp_connection = self.transport
        while not isinstance(tcp_connection, tcp.Connection):
            tcp_connection = tcp_connection.transport
        if len(line) < 100 and (tcp_connection.TLS
                                or isinstance(self.transport, DirectTLSProtocol)):
            # a reply over TLS waits in no buffer: the socket took it at once
            self.buffered.append(len(tcp_connection.dataBuffer) + tcp_connection._tempDataLen)

    def lineReceived(self, line):
        if line == b"STARTTLS":
            self.sendLine(b"220 go ahead")
            start_tls(self.transport, self.factory.creator)
        elif line == b"BIG":
            self.sendLine(b"x" * BIG)
        elif line == b"QUIT":
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 " + line)

    def connectionLost(self, reason):
        self.closed.callback(None)


def _read_line(stream) -> bytes:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise AssertionError(f"no whole line: {line!r}")
    return line[:-2]


def starttls_client(port: int, implicit: bool = False, tls12: bool = False) -> dict:
    """A blocking client: plain greeting, STARTTLS (unless C{implicit}), then
    a large reply, three pipelined commands and QUIT over TLS (1.2 only, with
    C{tls12})."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    seen = {}
    context = insecure_context()
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        if implicit:
            conn = context.wrap_socket(raw, suppress_ragged_eofs=False)
            stream = conn.makefile("rb")
            seen["greeting"] = _read_line(stream)
        else:
            plain = raw.makefile("rb")
            seen["greeting"] = _read_line(plain)
            raw.sendall(b"STARTTLS\r\n")
            seen["starttls"] = _read_line(plain)
            conn = context.wrap_socket(raw, suppress_ragged_eofs=False)
            stream = conn.makefile("rb")
        seen["version"] = conn.version()
        conn.sendall(b"BIG\r\n")
        seen["big"] = _read_line(stream)
        conn.sendall(b"one\r\ntwo\r\nthree\r\n")  # pipelined: one TLS record
        seen["pipelined"] = [_read_line(stream) for _ in range(3)]
        conn.sendall(b"QUIT\r\n")
        seen["quit"] = _read_line(stream)
        try:
            seen["after"] = conn.recv(10)  # b"" only after the close alert
        except ssl.SSLEOFError:
            seen["after"] = "no close alert"
        stream.close()
        conn.close()
    finally:
        raw.close()
    return seen


class DirectTLSTests(unittest.TestCase):
    def setUp(self):
        cert, key, _ = make_pair()
        self.creator = tssl.PrivateCertificate.loadPEM(cert + key).options()

    def listen(self, wrap=None):
        factory = protocol.ServerFactory.forProtocol(StartTLSLines)
        factory.protocols = []
        factory.creator = self.creator
        port = reactor.listenTCP(0, wrap(factory) if wrap else factory, interface="127.0.0.1")

        def close():
            d = defer.DeferredList([p.closed for p in factory.protocols])
            d.addCallback(lambda _: port.stopListening())
            return d
        self.addCleanup(close)
        return factory, port.getHost().port

    def assert_served(self, seen, server):
        self.assertEqual(seen["greeting"], b"220 ready")
        self.assertIn(seen["version"], ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(seen["big"], b"x" * BIG)
        self.assertEqual(seen["pipelined"], [b"250 one", b"250 two", b"250 three"])
        self.assertEqual(seen["quit"], b"221 bye")
        self.assertEqual(seen["after"], b"")
        self.assertEqual(server.handshakes, 1)
        self.assertEqual(server.held, [], "a write waited for a later reactor turn")
        self.assertTrue(server.buffered)
        self.assertEqual(set(server.buffered), {0})

    @defer.inlineCallbacks
    def test_starttls_on_a_tcp_connection(self):
        factory, port = self.listen()
        seen = yield threads.deferToThread(starttls_client, port)
        [server] = factory.protocols
        self.assertEqual(seen["starttls"], b"220 go ahead")
        self.assert_served(seen, server)

    @defer.inlineCallbacks
    def test_the_connection_says_it_is_tls(self):
        factory, port = self.listen()
        states = []
        finished = threads.deferToThread(starttls_client, port)
        original = StartTLSLines.lineReceived

        def record(protocol, line):
            original(protocol, line)
            if line == b"STARTTLS":
                states.append((ISSLTransport.providedBy(protocol.transport),
                               type(protocol.transport.protocol)))
        self.patch(StartTLSLines, "lineReceived", record)
        yield finished
        self.assertEqual(states, [(True, DirectTLSProtocol)])

    @defer.inlineCallbacks
    def test_implicit_tls(self):
        factory, port = self.listen(lambda f: DirectTLSFactory(self.creator, False, f))
        seen = yield threads.deferToThread(starttls_client, port, True)
        [server] = factory.protocols
        self.assertIsInstance(server.transport, DirectTLSProtocol)
        self.assertTrue(ISSLTransport.providedBy(server.transport))
        self.assert_served(seen, server)

    @defer.inlineCallbacks
    def test_openssl_calls_serve_tls_1_2_and_1_3(self):
        for tls12 in (False, True):
            factory, port = self.listen()
            seen = yield threads.deferToThread(starttls_client, port, False, tls12)
            [server] = factory.protocols
            self.assert_served(seen, server)
            self.assertEqual(seen["version"], "TLSv1.2" if tls12 else "TLSv1.3")
            self.assertIs(server.layer._direct, True)

    @defer.inlineCallbacks
    def test_without_openssl_calls(self):
        """Where pyOpenSSL does not expose OpenSSL's calls and what its BIOs
        hold, the layer goes through pyOpenSSL's methods and reads until
        WantReadError, as Twisted does, with the same result."""
        self.patch(tlslayer, "_calls", None)
        factory, port = self.listen()
        seen = yield threads.deferToThread(starttls_client, port)
        [server] = factory.protocols
        self.assert_served(seen, server)
        self.assertIs(server.layer._direct, False)

    @defer.inlineCallbacks
    def test_a_context_with_a_verify_callback_keeps_pyopenssl_calls(self):
        # pyOpenSSL reports a verify callback's failure after each call
        self.creator.getContext().set_verify(
            tssl.SSL.VERIFY_PEER, lambda connection, cert, errno, depth, ok: True)
        factory, port = self.listen()
        seen = yield threads.deferToThread(starttls_client, port)
        [server] = factory.protocols
        self.assert_served(seen, server)
        self.assertIs(server.layer._direct, False)

    def test_other_transports_start_tls_themselves(self):
        started = []

        class Recording(StringTransport):
            def startTLS(self, creator, normal=True):
                started.append(creator)
        start_tls(Recording(), self.creator)
        self.assertEqual(started, [self.creator])
