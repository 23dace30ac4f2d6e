"""L{mailgw.domains.monitor.DNSMonitor}: the periodic check of every
domain's records against twisted.names' own server on loopback, its result
kept in the store, logged and exported; one check per domain and interval
however many nodes run. On SQLite, and again on PostgreSQL."""
from __future__ import annotations

import json

from twisted.internet import defer, task
from twisted.logger import globalLogPublisher
from twisted.names import dns
from twisted.trial import unittest

from mailgw.config import DNSConfig
from mailgw.domains.dkim import dns_value
from mailgw.domains.lookup import DomainLookup
from mailgw.domains.monitor import DNSMonitor
from mailgw.metrics import Metrics
from mailgw.relay.mx import make_resolver
from tests.relay.fixtures import PostgresFixture, StoreFixture
from tests.relay.zone import Zone, mx, serve

INTERVAL = 3600.0


def txt(value: str):
    data = value.encode()
    return dns.Record_TXT(*[data[i:i + 255] for i in range(0, len(data), 255)])


class MonitorContract(StoreFixture):
    """The seeded tenancy has good.example (acme/web), org.example (acme) and
    unverified.example (acme/web)."""

    @defer.inlineCallbacks
    def setUp(self):
        yield StoreFixture.setUp(self)
        self.zone = Zone({})
        self.address = serve(self, self.zone)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @defer.inlineCallbacks
    def publish(self, name: str):
        """Every record of C{name} as `domain dns` asks for it."""
        token = yield self.store.domain_verification_token(name)
        [key] = yield self.store.dkim_keys(name)
        self.zone.records[name] = [txt(f"mailgw-verification {token}"),
                                   txt("v=spf1 a mx ~all"), mx(10, f"mx.{name}")]
        self.zone.records[key.dns_name] = [txt(dns_value(key.private_key))]

    def monitor(self, clock, address=None, metrics=None):
        host, _, port = (address or self.address).rpartition(":")
        lookup = DomainLookup(make_resolver(f"{host}:{port}", clock_reactor()),
                              timeout=(1,))
        monitor = DNSMonitor(self.store, lookup, DNSConfig(check_interval=INTERVAL), clock,
                             metrics)
        monitor.startService()
        self.addCleanup(monitor.stopService)
        return monitor

    @defer.inlineCallbacks
    def statuses(self):
        return {d.name: (d.dns_status, d.dns_checked_at)
                for d in (yield self.store.list_domains())}

    def logged(self, level: str):
        from twisted.logger import formatEvent
        return [formatEvent(e) for e in self.events
                if e.get("log_level") is not None and e["log_level"].name == level
                and "domain DNS check" in e.get("log_format", "")]

    @defer.inlineCallbacks
    def test_every_domain_checked_kept_and_exported(self):
        yield self.publish("good.example")
        clock, metrics = task.Clock(), Metrics()
        clock.advance(1000)
        monitor = self.monitor(clock, metrics=metrics)
        yield monitor._round
        # names that do not exist (NXDOMAIN): every record Missing
        self.assertEqual((yield self.statuses()), {"good.example": ("OK", 1000.0),
                                                   "org.example": ("Missing", 1000.0),
                                                   "unverified.example": ("Missing", 1000.0)})
        _, records = yield self.store.dns_check_result("org.example")
        self.assertEqual({r["purpose"]: r["status"] for r in json.loads(records)},
                         {"verification": "Missing", "spf": "Missing", "dkim": "Missing",
                          "mx": "Missing"})
        sample = metrics.registry.get_sample_value
        self.assertEqual(sample("mailgw_domain_dns_status", {
            "domain": "good.example", "owner": "acme/web", "status": "OK"}), 1.0)
        self.assertEqual(sample("mailgw_domain_dns_status", {
            "domain": "org.example", "owner": "acme", "status": "OK"}), 0.0)
        self.assertEqual(sample("mailgw_domain_dns_status", {
            "domain": "org.example", "owner": "acme", "status": "Missing"}), 1.0)
        self.assertEqual(sample("mailgw_domain_dns_checks_total", {"status": "OK"}), 1.0)
        self.assertEqual(sample("mailgw_domain_dns_checks_total", {"status": "Missing"}), 2.0)
        # first results that are not OK are warnings, naming what is wrong
        warnings = self.logged("warn")
        self.assertEqual(len(warnings), 2, warnings)
        self.assertIn("domain DNS check: org.example (acme): Missing: verification Missing, "
                      "spf Missing, dkim Missing, mx Missing", warnings)

    @defer.inlineCallbacks
    def test_checked_again_after_the_interval_and_a_change_is_a_warning(self):
        yield self.publish("good.example")
        clock = task.Clock()
        monitor = self.monitor(clock)
        yield monitor._round
        asked = len(self.zone.queries)
        clock.advance(300)  # a round, but nothing is due yet
        yield monitor._round
        self.assertEqual(len(self.zone.queries), asked)
        del self.zone.records["good.example"]
        self.events.clear()
        clock.advance(INTERVAL)
        yield monitor._round
        self.assertEqual((yield self.statuses())["good.example"], ("Missing", INTERVAL + 300))
        self.assertEqual(len(self.logged("warn")), 1)  # only good.example changed
        self.assertIn("good.example (acme/web): Missing", self.logged("warn")[0])

    @defer.inlineCallbacks
    def test_two_nodes_check_each_domain_once_per_interval(self):
        clock = task.Clock()
        first, second = self.monitor(clock), self.monitor(clock)
        yield defer.DeferredList([d for d in (first._round, second._round) if d])
        checked = [q[0] for q in self.zone.queries if q[1] == "MX"]
        self.assertEqual(sorted(checked),
                         ["good.example", "org.example", "unverified.example"])

    @defer.inlineCallbacks
    def test_dns_server_down_is_error_not_missing(self):
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing answers there
        clock = task.Clock()
        monitor = DNSMonitor(self.store, DomainLookup(make_resolver(
            f"127.0.0.1:{port}", clock_reactor()), timeout=(0.2,)),
            DNSConfig(check_interval=INTERVAL), clock)
        domain = (yield self.store.list_domains())[0]
        status = yield defer.ensureDeferred(monitor_check(monitor, domain))
        self.assertEqual(status, "Error")
        self.assertEqual((yield self.statuses())[domain.name][0], "Error")

    def test_zero_interval_checks_nothing(self):
        monitor = DNSMonitor(self.store, None, DNSConfig(check_interval=0), task.Clock())
        monitor.startService()
        self.assertIsNone(monitor._loop)
        monitor.stopService()


async def monitor_check(monitor, domain):
    monitor.running = True
    try:
        return await monitor.check(domain)
    finally:
        monitor.running = False


def clock_reactor():
    """The real reactor: the DNS queries go over real UDP sockets (the
    monitor's own clock only paces its rounds)."""
    from twisted.internet import reactor
    return reactor


class SQLiteMonitorTests(MonitorContract, unittest.TestCase):
    """On SQLite."""


class PostgreSQLMonitorTests(PostgresFixture, MonitorContract, unittest.TestCase):
    """On PostgreSQL."""
