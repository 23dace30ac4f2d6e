"""MX resolution against a real twisted.names server on loopback: preference
order, the implicit MX, the null MX, a domain that does not exist, AAAA
after A, address literals, a DNS failure being temporary, and local
addresses left out unless allowed."""
from __future__ import annotations

import ipaddress
import os
import random

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.names import dns, hosts, resolve
from twisted.names import error as dns_error
from twisted.trial import unittest

from mailgw.relay.destinations import node_addresses
from mailgw.relay.errors import DeliveryError
from mailgw.relay.mx import MXResolver, Target, make_resolver
from tests.relay.zone import Zone, a, aaaa, mx, serve


class MXTests(unittest.TestCase):
    def resolver(self, records, port=2525, allow_local=True, own_addresses=None):
        """An L{MXResolver} over C{records}; these tests' addresses are on
        loopback, so local ones are allowed unless a test says otherwise."""
        self.zone = Zone(records)
        server = serve(self, self.zone)
        return MXResolver(make_resolver(server, reactor), port, random.Random(3),
                          allow_local, own_addresses)

    @defer.inlineCallbacks
    def test_preference_order_then_a_before_aaaa(self):
        r = self.resolver({
            "dest.test": [mx(20, "backup.dest.test"), mx(10, "mx1.dest.test")],
            "mx1.dest.test": [a("127.0.0.10"), aaaa("::1"), a("127.0.0.11")],
            "backup.dest.test": [a("127.0.0.20")],
        })
        targets = yield r.targets("dest.test")
        self.assertEqual(targets, [
            Target("mx1.dest.test", "127.0.0.10", 2525),
            Target("mx1.dest.test", "127.0.0.11", 2525),
            Target("mx1.dest.test", "::1", 2525),
            Target("backup.dest.test", "127.0.0.20", 2525)])
        self.assertEqual(targets[0].label, "mx1.dest.test [127.0.0.10]")

    @defer.inlineCallbacks
    def test_equal_preferences_are_shuffled(self):
        names = [f"mx{i}.dest.test" for i in range(6)]
        records = {"dest.test": [mx(10, n) for n in names]}
        records.update({n: [a(f"127.0.1.{i}")] for i, n in enumerate(names)})
        r = self.resolver(records)
        orders = set()
        for _ in range(5):
            orders.add(tuple(t.host for t in (yield r.targets("dest.test"))))
        self.assertGreater(len(orders), 1)
        self.assertTrue(all(sorted(o) == names for o in orders))

    @defer.inlineCallbacks
    def test_no_mx_falls_back_to_the_domain_address(self):
        r = self.resolver({"dest.test": [a("127.0.0.5")]})
        self.assertEqual((yield r.targets("dest.test")),
                         [Target("dest.test", "127.0.0.5", 2525)])

    @defer.inlineCallbacks
    def test_null_mx_is_permanent(self):
        r = self.resolver({"dest.test": [mx(0, ""), a("127.0.0.5")]})
        e = yield self.assertFailure(r.targets("dest.test"), DeliveryError)
        self.assertTrue(e.permanent)
        self.assertEqual(e.text, "dest.test accepts no mail (null MX)")
        self.assertNotIn(("dest.test", "A"), self.zone.queries)

    @defer.inlineCallbacks
    def test_domain_that_does_not_exist_is_permanent(self):
        r = self.resolver({})
        e = yield self.assertFailure(r.targets("nowhere.test"), DeliveryError)
        self.assertEqual((e.permanent, e.text), (True, "domain nowhere.test does not exist"))

    @defer.inlineCallbacks
    def test_no_mx_and_no_address_is_permanent(self):
        r = self.resolver({"dest.test": [dns.Record_TXT(b"v=spf1 -all")]})
        e = yield self.assertFailure(r.targets("dest.test"), DeliveryError)
        self.assertEqual((e.permanent, e.text),
                         (True, "dest.test has no MX record and no address"))

    @defer.inlineCallbacks
    def test_mx_hosts_without_addresses_are_temporary(self):
        r = self.resolver({"dest.test": [mx(10, "gone.dest.test")]})
        e = yield self.assertFailure(r.targets("dest.test"), DeliveryError)
        self.assertFalse(e.permanent)
        self.assertIn("gone.dest.test", e.text)

    @defer.inlineCallbacks
    def test_unreachable_dns_server_is_temporary(self):
        from twisted.names import client
        dead = client.Resolver(servers=[("127.0.0.1", 9)], reactor=reactor, timeout=(0.2,))
        e = yield self.assertFailure(MXResolver(dead, 25).targets("dest.test"), DeliveryError)
        self.assertFalse(e.permanent)
        self.assertTrue(e.text.startswith("DNS look-up of the MX of dest.test failed"), e.text)

    @defer.inlineCallbacks
    def test_servfail_is_temporary_and_nxdomain_permanent(self):
        from twisted.names import error as dns_error

        class Failing:
            def __init__(self, error):
                self.error = error

            def lookupMailExchange(self, name):
                return defer.fail(self.error)
        e = yield self.assertFailure(
            MXResolver(Failing(dns_error.DNSServerError("SERVFAIL")), 25).targets("dest.test"),
            DeliveryError)
        self.assertFalse(e.permanent, "a passing SERVFAIL must be retried, not bounced")
        for nxdomain in (dns_error.DNSNameError("NXDOMAIN"), dns_error.DomainError("gone")):
            e = yield self.assertFailure(MXResolver(Failing(nxdomain), 25).targets("dest.test"),
                                         DeliveryError)
            self.assertTrue(e.permanent)
            self.assertEqual(e.text, "domain dest.test does not exist")

    @defer.inlineCallbacks
    def test_address_literals_need_no_dns(self):
        r = self.resolver({})
        self.assertEqual((yield r.targets("[127.0.0.9]")),
                         [Target("127.0.0.9", "127.0.0.9", 2525)])
        self.assertEqual((yield r.targets("[IPv6:::1]")), [Target("::1", "::1", 2525)])
        self.assertEqual(self.zone.queries, [])


class LocalDestinationTests(unittest.TestCase):
    """Unless allowed, no target at a local address: the others are kept,
    and a domain left with none fails permanently (no DNS can help)."""

    def resolver(self, records, own_addresses=("203.0.113.9",)):
        self.zone = Zone(records)
        return MXResolver(make_resolver(serve(self, self.zone), reactor), 2525,
                          random.Random(3), own_addresses=own_addresses)

    @defer.inlineCallbacks
    def assertRefused(self, resolver, domain, text):
        e = yield self.assertFailure(resolver.targets(domain), DeliveryError)
        self.assertEqual((e.permanent, e.code, e.host, e.text), (True, None, None, text))

    @defer.inlineCallbacks
    def test_address_literals(self):
        r = self.resolver({})
        for address in ("127.0.0.1", "IPv6:::1", "IPv6:::ffff:127.0.0.1", "169.254.169.254",
                        "0.0.0.0", "203.0.113.9"):
            spelt = str(ipaddress.ip_address(address.removeprefix("IPv6:")))
            yield self.assertRefused(r, f"[{address}]", f"refused to connect to a local "
                                     f"address {spelt} (relay.allow_local_destinations is off)")
        self.assertEqual((yield r.targets("[192.0.2.1]")),
                         [Target("192.0.2.1", "192.0.2.1", 2525)])
        self.assertEqual(self.zone.queries, [])

    @defer.inlineCallbacks
    def test_mx_pointing_at_loopback(self):
        r = self.resolver({"dest.test": [mx(10, "mx.dest.test")],
                           "mx.dest.test": [a("127.0.0.1")]})
        yield self.assertRefused(r, "dest.test", "refused to connect to a local address "
                                 "127.0.0.1 of mx.dest.test (relay.allow_local_destinations "
                                 "is off)")

    @defer.inlineCallbacks
    def test_every_local_answer_refused(self):
        r = self.resolver({
            "dest.test": [mx(10, "mx1.dest.test"), mx(20, "mx2.dest.test")],
            "mx1.dest.test": [a("127.0.0.1"), aaaa("::ffff:127.0.0.1"), aaaa("fe80::1")],
            "mx2.dest.test": [a("224.0.0.1"), a("203.0.113.9"), aaaa("::")],
        })
        yield self.assertRefused(r, "dest.test", (
            "refused to connect to local addresses 127.0.0.1 of mx1.dest.test, "
            "::ffff:127.0.0.1 of mx1.dest.test, fe80::1 of mx1.dest.test, "
            "224.0.0.1 of mx2.dest.test, 203.0.113.9 of mx2.dest.test, "
            ":: of mx2.dest.test (relay.allow_local_destinations is off)"))

    @defer.inlineCallbacks
    def test_the_implicit_mx_too(self):
        yield self.assertRefused(self.resolver({"dest.test": [a("127.0.0.5")]}), "dest.test",
                                 "refused to connect to a local address 127.0.0.5 of "
                                 "dest.test (relay.allow_local_destinations is off)")

    @defer.inlineCallbacks
    def test_local_addresses_skipped_others_kept(self):
        r = self.resolver({
            "dest.test": [mx(10, "mx1.dest.test"), mx(20, "mx2.dest.test")],
            "mx1.dest.test": [a("127.0.0.1"), a("192.0.2.10"), aaaa("::1"),
                              aaaa("2001:db8::10")],
            "mx2.dest.test": [aaaa("::ffff:127.0.0.1")],
        })
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.assertEqual((yield r.targets("dest.test")), [
            Target("mx1.dest.test", "192.0.2.10", 2525),
            Target("mx1.dest.test", "2001:db8::10", 2525)])
        self.assertEqual([formatEvent(e) for e in events if e.get("domain") == "dest.test"], [
            f"relay: not connecting to {label} for dest.test: a local address "
            "(relay.allow_local_destinations is off)"
            for label in ("mx1.dest.test [127.0.0.1]", "mx1.dest.test [::1]",
                          "mx2.dest.test [::ffff:127.0.0.1]")])

    @defer.inlineCallbacks
    def test_local_and_a_dns_failure_is_temporary(self):
        """The host whose look-up failed may have an address to use: retry."""
        class Failing(Zone):
            def _lookup(self, name, cls, type, timeout):
                if name.startswith(b"broken."):
                    return defer.fail(dns_error.DNSQueryTimeoutError(name))
                return super()._lookup(name, cls, type, timeout)
        self.zone = Failing({"dest.test": [mx(10, "mx.dest.test"), mx(20, "broken.dest.test")],
                             "mx.dest.test": [a("127.0.0.1")]})
        r = MXResolver(self.zone, 2525, random.Random(3), own_addresses=())
        e = yield self.assertFailure(r.targets("dest.test"), DeliveryError)
        self.assertEqual((e.permanent, e.text),
                         (False, "DNS look-up failed: broken.dest.test: timed out"))

    @defer.inlineCallbacks
    def test_allowed_when_configured(self):
        r = MXResolver(Zone({}), 2525, allow_local=True)
        self.assertEqual(r.own_addresses, frozenset())
        [target] = yield r.targets("[IPv6:::ffff:127.0.0.1]")
        self.assertEqual(ipaddress.ip_address(target.address).ipv4_mapped,
                         ipaddress.ip_address("127.0.0.1"))

    def test_own_addresses_default_to_this_node(self):
        self.assertEqual(MXResolver(Zone({}), 25).own_addresses, node_addresses())


class SystemResolverTests(unittest.SynchronousTestCase):
    def test_hosts_file_then_resolv_conf_servers(self):
        folder = self.mktemp()
        os.makedirs(folder)
        conf, hosts_file = os.path.join(folder, "resolv.conf"), os.path.join(folder, "hosts")
        with open(conf, "w") as f:
            f.write("nameserver 192.0.2.53\n")
        with open(hosts_file, "w") as f:
            f.write("127.0.0.7 mx.hosts.test\n")
        chain = make_resolver("", Clock(), conf.encode(), hosts_file.encode())
        self.assertIsInstance(chain, resolve.ResolverChain)
        self.assertIsInstance(chain.resolvers[0], hosts.Resolver)
        self.assertEqual(chain.resolvers[-1].dynServers, [("192.0.2.53", 53)])
        found = self.successResultOf(MXResolver(chain, 25)._addresses("mx.hosts.test"))
        self.assertEqual(found, ["127.0.0.7"])
