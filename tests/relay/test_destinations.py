"""Which addresses are local (and so refused for delivery to MX hosts unless
C{relay.allow_local_destinations} is on), as pure functions: loopback,
link-local, unspecified, multicast, IPv4-mapped IPv6, and this node's own."""
from __future__ import annotations

import ipaddress
import socket

from twisted.trial import unittest

from mailgw.relay import destinations
from mailgw.relay.destinations import is_local, node_addresses, parse

OWN = frozenset({ipaddress.ip_address("203.0.113.9"), ipaddress.ip_address("2001:db8::9")})

LOCAL = ["127.0.0.1", "127.255.255.254", "::1", "169.254.169.254", "fe80::1", "fe80::1%eth0",
         "0.0.0.0", "0.1.2.3", "::", "224.0.0.1", "239.255.255.250", "ff02::1",
         "::ffff:127.0.0.1", "::ffff:169.254.0.1", "::ffff:0.0.0.0", "::ffff:224.0.0.1",
         "203.0.113.9", "::ffff:203.0.113.9", "2001:db8::9", "not an address", "localhost", ""]

ELSEWHERE = ["192.0.2.1", "198.51.100.7", "10.0.0.1", "192.168.1.1", "8.8.8.8",
             "2001:db8::1", "::ffff:192.0.2.1", "2606:4700::1111", "203.0.113.10"]


class IsLocalTests(unittest.SynchronousTestCase):
    def test_local(self):
        for address in LOCAL:
            self.assertTrue(is_local(address, OWN), address)

    def test_elsewhere(self):
        """Private networks are not local: an operator may relay to them
        (only this node and its link are out of bounds)."""
        for address in ELSEWHERE:
            self.assertFalse(is_local(address, OWN), address)

    def test_own_addresses_only_when_given(self):
        self.assertFalse(is_local("203.0.113.9"))
        self.assertTrue(is_local(ipaddress.ip_address("203.0.113.9"), OWN))

    def test_ipv4_mapped_judged_as_ipv4(self):
        self.assertEqual(parse("::ffff:127.0.0.1"), ipaddress.ip_address("127.0.0.1"))
        self.assertEqual(parse("fe80::1%eth0"), ipaddress.ip_address("fe80::1"))
        self.assertIsNone(parse("mx.example"))


class NodeAddressesTests(unittest.SynchronousTestCase):
    def test_this_node(self):
        found = node_addresses()
        self.assertIsInstance(found, frozenset)
        self.assertTrue(all(isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address))
                            for ip in found), found)
        for info in socket.getaddrinfo(socket.gethostname(), None):
            self.assertIn(parse(info[4][0]), found)

    def test_host_name_and_route_sources(self):
        self.patch(destinations.socket, "gethostname", lambda: "node.test")
        self.patch(destinations.socket, "getaddrinfo", lambda host, port: [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("198.51.100.7", 0)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::ffff:198.51.100.8", 0, 0, 0))])
        self.patch(destinations, "_route_sources", lambda: ["2001:db8::7"])
        self.assertEqual(node_addresses(), frozenset(map(ipaddress.ip_address, (
            "198.51.100.7", "198.51.100.8", "2001:db8::7"))))

    def test_host_name_that_does_not_resolve(self):
        def fail(host, port):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        self.patch(destinations.socket, "getaddrinfo", fail)
        self.patch(destinations, "_route_sources", lambda: [])
        self.assertEqual(node_addresses(), frozenset())
