"""MX resolution against a real twisted.names server on loopback: preference
order, the implicit MX, the null MX, a domain that does not exist, AAAA
after A, address literals, and a DNS failure being temporary."""
from __future__ import annotations

import os
import random

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.names import dns, hosts, resolve
from twisted.trial import unittest

from mailgw.relay.errors import DeliveryError
from mailgw.relay.mx import MXResolver, Target, make_resolver
from tests.relay.zone import Zone, a, aaaa, mx, serve


class MXTests(unittest.TestCase):
    def resolver(self, records, port=2525):
        self.zone = Zone(records)
        server = serve(self, self.zone)
        return MXResolver(make_resolver(server, reactor), port, random.Random(3))

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
    def test_address_literals_need_no_dns(self):
        r = self.resolver({})
        self.assertEqual((yield r.targets("[127.0.0.9]")),
                         [Target("127.0.0.9", "127.0.0.9", 2525)])
        self.assertEqual((yield r.targets("[IPv6:::1]")), [Target("::1", "::1", 2525)])
        self.assertEqual(self.zone.queries, [])


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
