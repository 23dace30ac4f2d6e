"""DomainDNSError: the gateway's periodic DNS check (against twisted.names'
own server on loopback) writes it, in Postal's shape, for a server's domain
whose SPF or DKIM record is wrong, and not for a domain whose records are
right, an organization's domain, or a check whose look-ups failed."""
from __future__ import annotations

import functools
import json

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from mailgw.config import DNSConfig
from mailgw.domains.dkim import dns_value
from mailgw.domains.lookup import DomainLookup
from mailgw.domains.monitor import DNSMonitor
from mailgw.relay.mx import make_resolver
from mailgw.webhooks import payloads
from mailgw.webhooks.events import domain_checked
from tests.domains.test_monitor import txt
from tests.relay.fixtures import StoreFixture
from tests.relay.zone import Zone, mx, serve

#: the keys of Postal's DomainDNSError payload (app/models/concerns/has_dns_checks.rb)
DNS_ERROR_KEYS = {"server", "domain", "uuid", "dns_checked_at", "spf_status", "spf_error",
                  "dkim_status", "dkim_error", "mx_status", "mx_error", "return_path_status",
                  "return_path_error"}


class DomainDNSErrorTests(StoreFixture, unittest.TestCase):
    """The seeded tenancy has good.example and unverified.example (acme/web)
    and org.example (the organization acme)."""

    @defer.inlineCallbacks
    def setUp(self):
        yield StoreFixture.setUp(self)
        self.zone = Zone({})
        self.address = serve(self, self.zone)
        yield self.store.add_webhook(("acme", "web"), "https://hooks.example/dns",
                                     events=["DomainDNSError"])
        yield self.store.add_webhook(("acme", "other"), "https://hooks.example/other",
                                     all_events=True)

    @defer.inlineCallbacks
    def publish(self, name: str, spf=("v=spf1 a mx ~all",), dkim=True):
        token = yield self.store.domain_verification_token(name)
        [key] = yield self.store.dkim_keys(name)
        self.zone.records[name] = [txt(f"mailgw-verification {token}"),
                                   *[txt(v) for v in spf], mx(10, f"mx.{name}")]
        if dkim:
            self.zone.records[key.dns_name] = [txt(dns_value(key.private_key))]

    @defer.inlineCallbacks
    def round(self):
        host, _, port = self.address.rpartition(":")
        lookup = DomainLookup(make_resolver(f"{host}:{port}", reactor), timeout=(1,))
        clock = task.Clock()
        clock.advance(5000)
        monitor = DNSMonitor(self.store, lookup, DNSConfig(check_interval=3600.0), clock)
        monitor.after_check = functools.partial(domain_checked, self.store)
        monitor.startService()
        self.addCleanup(monitor.stopService)
        yield monitor._round
        found = yield self.store.list_webhook_requests()
        return [(r, json.loads(r.body)) for r, _ in found]

    @defer.inlineCallbacks
    def test_written_for_a_servers_domain_with_broken_records(self):
        yield self.publish("good.example")
        # two SPF records are an error (RFC 7208 section 4.5); no DKIM record
        yield self.publish("unverified.example", spf=("v=spf1 a ~all", "v=spf1 mx ~all"),
                           dkim=False)
        [(request, body)] = yield self.round()  # org.example is the organization's
        self.assertEqual((request.event, request.url, request.server),
                         ("DomainDNSError", "https://hooks.example/dns", "acme/web"))
        payload = body["payload"]
        self.assertEqual(set(payload), DNS_ERROR_KEYS)
        self.assertEqual(payload["domain"], "unverified.example")
        self.assertEqual(payload["server"], {
            "uuid": payloads.stable_uuid("server", self.tenancy["web"].id), "name": "Web",
            "permalink": "web", "organization": "acme"})
        self.assertEqual((payload["spf_status"], payload["dkim_status"], payload["mx_status"],
                          payload["return_path_status"]), ("Invalid", "Missing", "OK", None))
        self.assertIn("unverified.example: Invalid", payload["spf_error"])
        self.assertIn("._domainkey.unverified.example: Missing; expected v=DKIM1",
                      payload["dkim_error"])
        self.assertIsNone(payload["mx_error"])
        self.assertEqual(payload["dns_checked_at"], 5000)

    @defer.inlineCallbacks
    def test_not_written_when_the_lookups_fail(self):
        self.address = "127.0.0.1:9"  # nothing answers there
        self.assertEqual((yield self.round()), [])

    def test_postal_rule(self):
        def rows(**statuses):
            return [{"purpose": p, "name": "d", "status": s, "expected": "x", "found": []}
                    for p, s in statuses.items()]
        self.assertTrue(payloads.dns_ok(rows(spf="OK", dkim="OK", mx="Missing")))
        self.assertFalse(payloads.dns_ok(rows(spf="OK", dkim="Missing", mx="OK")))
        self.assertFalse(payloads.dns_ok(rows(spf="OK", dkim="OK", mx="Invalid")))
        self.assertTrue(payloads.dns_ok(rows(spf="OK", dkim="OK", return_path="Missing")))
        self.assertEqual(payloads.stable_uuid("server", 1), payloads.stable_uuid("server", 1))
        self.assertNotEqual(payloads.stable_uuid("server", 1),
                            payloads.stable_uuid("domain", 1))
