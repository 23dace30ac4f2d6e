"""The HTTP API listener's limits over real sockets on loopback: the
connection caps (in all and per client address), the idle timeout, the
deadline for a request's headers (a "slowloris" client trickling header bytes)
and for its body, and a normal request through all of them.

The caps run on the real reactor. The timeouts run on a L{Clock} (the site's
reactor), advanced only once the server has seen each byte, so no test
sleeps and none depends on the machine's speed."""
from __future__ import annotations

import json

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial import unittest

from mailgw.auth.realm import build_portal
from mailgw.config import Config, HTTPAPIConfig, LimitsConfig
from mailgw.metrics import Metrics
from mailgw.web.api import api_listener_service, build_api_site
from mailgw.web.limits import ConnectionCaps
from tests.helpers import HOSTNAME, make_store, seed_tenancy
from tests.web.test_api import API_KEY, MESSAGE, core_of, http, simple


class _Observed(ProtocolWrapper):
    """A server connection that reports what it sees to its factory."""

    def makeConnection(self, transport):
        super().makeConnection(transport)
        self.factory.connected.put(self)

    def dataReceived(self, data):
        super().dataReceived(data)
        self.factory.received.put(data)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.lost.put(self)


class ServerSide(WrappingFactory):
    """Wraps the site, inside the caps: the test waits on what the server has
    seen (a connection admitted, bytes read, a connection gone) before it
    advances the clock or counts."""

    protocol = _Observed

    def __init__(self, wrapped):
        super().__init__(wrapped)
        self.connected = defer.DeferredQueue()
        self.received = defer.DeferredQueue()
        self.lost = defer.DeferredQueue()

    @defer.inlineCallbacks
    def close_all(self):
        for p in list(self.protocols):
            p.transport.abortConnection()
        while self.protocols:
            yield self.lost.get()


class Client(protocol.Protocol):
    """A raw client: what it was sent, and a Deferred for the end."""

    def __init__(self):
        self.data = b""
        self.lost = defer.Deferred()
        self._waiting = []

    def dataReceived(self, data):
        self.data += data
        for d, predicate in list(self._waiting):
            if predicate(self.data):
                self._waiting.remove((d, predicate))
                d.callback(self.data)

    def connectionLost(self, reason):
        self.lost.callback(self.data)

    def received(self, predicate):
        """Deferred firing once the bytes received satisfy C{predicate}."""
        if predicate(self.data):
            return defer.succeed(self.data)
        d = defer.Deferred()
        self._waiting.append((d, predicate))
        return d


def whole_response(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


class LimitsTestBase(unittest.TestCase):
    """The API listener as the gateway builds it, on loopback; C{clock} is
    the site's reactor (None: the real one)."""

    timeout = 30
    api = {}
    clock = None

    @defer.inlineCallbacks
    def setUp(self):
        store = yield make_store(self)
        yield seed_tenancy(store)
        yield store.add_credential(("acme", "web"), "api", API_KEY)
        spool = self.mktemp()
        self.config = Config(
            hostname=HOSTNAME, spool_directory=spool,
            limits=LimitsConfig(max_message_size_mb=1),
            http_api=HTTPAPIConfig(endpoint="tcp:0:interface=127.0.0.1", **self.api))
        self.metrics = Metrics()
        self.log = []
        globalLogPublisher.addObserver(self.log.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.log.append)
        site = build_api_site(build_portal(store, reactor, None), core_of(store, self.config),
                              self.config, self.clock or reactor, self.metrics)
        self.server = ServerSide(site)
        service = api_listener_service(self.server, self.config, None, reactor, self.metrics)
        service.startService()
        self.port = service.port.getHost().port

        @defer.inlineCallbacks
        def stop():
            yield service.stopService()
            yield self.server.close_all()
        self.addCleanup(stop)

    @defer.inlineCallbacks
    def connect(self, source="127.0.0.1"):
        client = Client()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port,
                                                bindAddress=(source, 0))
        yield endpoints.connectProtocol(endpoint, client)

        def close():
            if not client.lost.called:
                client.transport.abortConnection()
                return client.lost
        self.addCleanup(close)
        return client

    def counted(self, name, reason):
        return self.metrics.registry.get_sample_value(name + "_total", {"reason": reason}) or 0

    def logged(self, text):
        return [formatEvent(e) for e in self.log if text in formatEvent(e)]


class ConnectionCapTests(LimitsTestBase):
    api = {"max_connections": 3, "max_connections_per_ip": 2}

    @defer.inlineCallbacks
    def test_one_address_over_its_cap_is_closed_others_still_get_in(self):
        first = yield self.connect()
        yield self.server.connected.get()
        yield self.connect()
        yield self.server.connected.get()
        third = yield self.connect()
        self.assertEqual((yield third.lost), b"", "closed at once, without a word")
        self.assertEqual(self.counted("mailgw_http_refused_connections",
                                      "too many connections from address"), 1)
        [line] = self.logged("refused")
        self.assertIn("connection from 127.0.0.1 refused", line)
        self.assertIn("max_connections_per_ip = 2", line)
        # another address is not locked out by this one
        yield self.connect("127.0.0.2")
        yield self.server.connected.get()
        # a connection that ends frees its place
        first.transport.loseConnection()
        yield first.lost
        yield self.server.lost.get()
        yield self.connect()
        yield self.server.connected.get()
        self.assertEqual(self.server.connected.pending, [])

    @defer.inlineCallbacks
    def test_total_cap(self):
        for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            yield self.connect(source)
            yield self.server.connected.get()
        fourth = yield self.connect("127.0.0.4")
        self.assertEqual((yield fourth.lost), b"")
        self.assertEqual(self.counted("mailgw_http_refused_connections",
                                      "too many connections"), 1)
        [line] = self.logged("refused")
        self.assertIn("connection from 127.0.0.4 refused", line)
        self.assertIn("max_connections = 3", line)

    def test_counts_by_address(self):
        """The bookkeeping behind the caps, without sockets."""
        from twisted.internet.address import IPv4Address

        class Transport:
            def __init__(self, host):
                self.host = host

            def getPeer(self):
                return IPv4Address("TCP", self.host, 1)

        caps = ConnectionCaps(protocol.Factory.forProtocol(protocol.Protocol), 10, 2)
        built = [caps.buildProtocol(IPv4Address("TCP", "192.0.2.1", n)) for n in range(3)]
        self.assertIsNone(built[2])
        for p in built[:2]:
            p.makeConnection(Transport("192.0.2.1"))
        self.assertEqual((caps.open, dict(caps.by_address)), (2, {"192.0.2.1": 2}))
        built[0].connectionLost(None)
        self.assertEqual((caps.open, dict(caps.by_address)), (1, {"192.0.2.1": 1}))
        built[1].connectionLost(None)
        self.assertEqual((caps.open, dict(caps.by_address)), (0, {}))


class ClockTestBase(LimitsTestBase):
    """The site's timeouts on a L{Clock}."""

    def setUp(self):
        self.clock = Clock()
        return super().setUp()

    @defer.inlineCallbacks
    def send(self, client, data):
        """Send C{data}; fires once the server has read all of it."""
        client.transport.write(data)
        got = b""
        while len(got) < len(data):
            got += yield self.server.received.get()

    def timeouts(self, reason):
        return self.counted("mailgw_http_timeouts", reason)


class TimeoutTests(ClockTestBase):
    api = {"idle_timeout": 2, "header_timeout": 3, "body_timeout": 5}

    @defer.inlineCallbacks
    def test_idle_connection_closed_after_idle_timeout(self):
        client = yield self.connect()
        yield self.server.connected.get()
        self.clock.advance(1.9)
        self.assertEqual(self.timeouts("idle"), 0)
        self.clock.advance(0.1)
        self.assertEqual((yield client.lost), b"")
        self.assertEqual(self.timeouts("idle"), 1)

    @defer.inlineCallbacks
    def test_slowloris_never_gets_past_the_header_deadline(self):
        """One header byte a second keeps the idle timeout (2 s) from ever
        firing; the header deadline (3 s from the first byte) cuts it off."""
        client = yield self.connect()
        yield self.server.connected.get()
        head = b"POST " + MESSAGE.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: aaaa"
        for second, byte in enumerate(head[:3]):
            self.assertEqual(self.timeouts("headers"), 0, f"cut before {second} s")
            yield self.send(client, bytes([byte]))
            self.clock.advance(1)
        self.assertEqual(self.timeouts("headers"), 1)
        self.assertEqual(self.timeouts("idle"), 0)
        data = yield client.lost
        self.assertTrue(data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data)
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertIn(b"Connection: close", head)
        self.assertEqual(json.loads(body)["data"]["code"], "RequestTimeout")
        [line] = self.logged("did not send")
        self.assertIn("127.0.0.1 did not send a request's headers within 3 s", line)

    @defer.inlineCallbacks
    def test_trickled_body_cut_at_the_body_deadline(self):
        client = yield self.connect()
        yield self.server.connected.get()
        yield self.send(client, b"POST " + MESSAGE.encode() + b" HTTP/1.1\r\n"
                        b"Host: 127.0.0.1\r\nX-Server-API-Key: " + API_KEY.encode()
                        + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        for second in range(5):
            self.assertEqual(self.timeouts("body"), 0, f"cut before {second} s")
            yield self.send(client, b" ")
            self.clock.advance(1)
        self.assertEqual(self.timeouts("body"), 1)
        data = yield client.lost
        self.assertTrue(data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data)
        self.assertEqual(self.timeouts("headers") + self.timeouts("idle"), 0)

    @defer.inlineCallbacks
    def test_a_normal_request_still_works(self):
        status, _, data = yield deferToThread(
            http, f"http://127.0.0.1:{self.port}{MESSAGE}", json.dumps(simple()).encode(),
            {"X-Server-API-Key": API_KEY, "Content-Type": "application/json"})
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(data)["status"], "success", data)
        self.assertEqual([self.timeouts(r) for r in ("idle", "headers", "body")], [0, 0, 0])


class KeepAliveTests(ClockTestBase):
    api = {"idle_timeout": 10, "header_timeout": 3, "body_timeout": 5}

    @defer.inlineCallbacks
    def test_header_deadline_starts_with_a_request_not_after_the_last_one(self):
        """Between requests only the idle timeout runs: a kept-alive
        connection may wait longer than the header deadline, and each
        request gets a deadline of its own."""
        client = yield self.connect()
        yield self.server.connected.get()
        request = b"GET /nothing HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        for _ in range(2):
            yield self.send(client, request)
            data = yield client.received(whole_response)
            self.assertTrue(data.startswith(b"HTTP/1.1 404 "), data)
            client.data = b""
            self.clock.advance(5)  # past the header deadline's length, under idle_timeout
            self.assertEqual([self.timeouts(r) for r in ("idle", "headers", "body")],
                             [0, 0, 0])
        self.clock.advance(5)
        self.assertEqual((yield client.lost), b"")  # idle_timeout after the last answer
        self.assertEqual(self.timeouts("idle"), 1)
