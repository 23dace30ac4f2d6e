"""Shared test fixtures: a real SQLite store on disk with a small tenancy, a
store wrapper that lets a test wait for every look-up it started, and a
protocol harness over StringTransport with a Clock."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailgw.auth.guard import AuthenticationGuard
from mailgw.auth.realm import build_portal
from mailgw.smtp.delivery import SubmissionDelivery
from mailgw.smtp.factory import ProtocolSettings, SubmissionFactory
from mailgw.submission import CoreSettings, SubmissionCore
from mailgw.store import open_store

HOSTNAME = "mx.mailgw.test"


class TrackingStore:
    """Passes every call to the real store and remembers its Deferred, so a
    test can wait until all the work it caused is done."""

    def __init__(self, store):
        self._store = store
        self.pending = []

    def __getattr__(self, name):
        target = getattr(self._store, name)
        if not callable(target):
            return target

        def call(*args, **kwargs):
            d = target(*args, **kwargs)
            if isinstance(d, defer.Deferred):
                self.pending.append(d)
            return d
        return call

    @defer.inlineCallbacks
    def settle(self):
        while self.pending:
            pending, self.pending = self.pending, []
            yield defer.DeferredList(pending, consumeErrors=False)
            # let callbacks chained after ours (the protocol's) run first
            yield defer.succeed(None)


def database_url(testcase) -> str:
    """A fresh database for the test, on the engine the test class names in
    its C{engine} attribute ("sqlite", the default, or "postgresql": a new
    database on the run's throwaway cluster, dropped after the test)."""
    if getattr(testcase, "engine", "sqlite") == "postgresql":
        from tests import pgcluster
        from tests.store import postgres_admin
        url, drop = pgcluster.fresh_database(postgres_admin())
        testcase.addCleanup(drop)
        return url
    folder = os.path.abspath(testcase.mktemp())
    os.makedirs(folder, exist_ok=True)
    return "sqlite:" + os.path.join(folder, "mailgw.sqlite3")


def on_postgres(cls):
    """The same tests as C{cls}, on PostgreSQL."""
    return type("Postgres" + cls.__name__, (cls,),
                {"engine": "postgresql", "__module__": cls.__module__})


@defer.inlineCallbacks
def make_store(testcase, url=None):
    """A started, upgraded store (a fresh database of the test's engine by
    default), closed when the test ends."""
    if url is None:
        url = database_url(testcase)
    store = open_store(url, reactor)
    yield store.start()
    testcase.addCleanup(store.close)
    yield store.upgrade()
    return store


@defer.inlineCallbacks
def seed_tenancy(store):
    """acme/web with a verified domain, an org domain, an unverified one and
    two smtp credentials; acme/other; and an smtp-ip credential."""
    yield store.add_organization("acme", "Acme")
    web = yield store.add_server("acme", "web", "Web")
    other = yield store.add_server("acme", "other", "Other")
    yield store.add_domain("good.example", server=("acme", "web"), verified=True)
    yield store.add_domain("org.example", organization="acme", verified=True)
    yield store.add_domain("unverified.example", server=("acme", "web"))
    key = yield store.add_credential(("acme", "web"), "smtp", "K" * 24, name="main")
    key2 = yield store.add_credential(("acme", "web"), "smtp", "L" * 24, name="second")
    other_key = yield store.add_credential(("acme", "other"), "smtp", "O" * 24)
    ip = yield store.add_credential(("acme", "other"), "smtp-ip", "198.51.100.0/24")
    return {"web": web, "other": other, "key": key.key, "key2": key2.key,
            "other_key": other_key.key, "ip_credential": ip}


@defer.inlineCallbacks
def stored_messages(store):
    """Every queue entry and, for each, its stored body (in the same order)."""
    entries = yield store.list_entries()
    bodies = []
    for entry in entries:
        bodies.append((yield store.read_body(entry.message_id)))
    return entries, bodies


def b64(data) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def cram_answer(user: str, key: str, challenge_line: bytes) -> str:
    challenge = base64.b64decode(challenge_line.split(b" ", 1)[1].strip())
    digest = hmac.new(key.encode(), challenge, hashlib.md5).hexdigest()
    return b64(f"{user} {digest}")


class Harness:
    """One protocol instance over a StringTransport."""

    def __init__(self, testcase, store, client_ip="192.0.2.7", **settings):
        self.store = TrackingStore(store)
        self.clock = Clock()
        spool = testcase.mktemp()
        os.makedirs(spool)
        tls_options = settings.pop("tls_options", None)
        header_size = settings.pop("max_header_size", 64 * 1024)
        options = dict(hostname=HOSTNAME, max_message_size=1024 * 1024)
        options.update(settings)
        self.settings = ProtocolSettings(**options)
        core_settings = CoreSettings(HOSTNAME, self.settings.max_message_size,
                                     header_size, spool)
        self.core = SubmissionCore(self.store, self.clock, core_settings)

        def make_delivery(identity, session):
            return SubmissionDelivery(identity, session, self.core, self.store)

        #: set C{guard.throttle} to count failures
        self.guard = AuthenticationGuard()
        self.portal = build_portal(self.store, self.clock, make_delivery, self.guard)
        self.factory = SubmissionFactory(self.settings, self.portal, self.clock,
                                         tls_options, self.guard)
        self.testcase = testcase
        self.client_ip = client_ip

    def connect(self):
        if ":" in self.client_ip:
            peer = IPv6Address("TCP", self.client_ip, 40000)
        else:
            peer = IPv4Address("TCP", self.client_ip, 40000)
        self.transport = StringTransport(peerAddress=peer)
        self.protocol = self.factory.buildProtocol(peer)
        self.protocol.makeConnection(self.transport)
        self.testcase.addCleanup(self._lose)
        return self.take()

    def _lose(self):
        if self.protocol._mode != "closed" or not self.transport.disconnecting:
            self.protocol.connectionLost(None)

    def take(self) -> list[bytes]:
        """The reply lines written since the last take."""
        out = self.transport.value()
        self.transport.clear()
        return out.split(b"\r\n")[:-1]

    @defer.inlineCallbacks
    def send(self, data):
        """Write C{data} (str or bytes), wait for all look-ups, return reply lines."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.protocol.dataReceived(data)
        yield self.store.settle()
        return self.take()

    @defer.inlineCallbacks
    def lines(self, *commands):
        """Send each command (CRLF added) in turn; the replies of each, joined."""
        out = []
        for command in commands:
            out += (yield self.send(command + "\r\n"))
        return out
