"""Tests for mailgw.smtp.proxy: the PROXY protocol v1/v2 parser (spec SMTP.md §2)."""

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from mailgw.smtp.proxy import V1_MAX, V2_MAX_LENGTH, V2_SIGNATURE, ProxyError, ProxyHeader, parse_proxy_header

SMTP = b"EHLO client.example\r\n"


def v2(ver_cmd=0x21, fam=0x11, body=b"", length=None):
    """A v2 header: signature, version/command, family/transport, length, body."""
    size = len(body) if length is None else length
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, size) + body


def v2_tcp4(src="192.0.2.1", dst="198.51.100.2", sport=12345, dport=25, tlvs=b"", ver_cmd=0x21):
    body = struct.pack("!4s4sHH", ipaddress.IPv4Address(src).packed,
                       ipaddress.IPv4Address(dst).packed, sport, dport)
    return v2(ver_cmd, 0x11, body + tlvs)


def v2_tcp6(src="2001:db8::1", dst="2001:db8::2", sport=40000, dport=587, tlvs=b""):
    body = struct.pack("!16s16sHH", ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed, sport, dport)
    return v2(0x21, 0x21, body + tlvs)


def tlv(kind, value):
    return struct.pack("!BH", kind, len(value)) + value


class ParseMixin:
    def assertParses(self, header, expected):
        """Every strict prefix needs more bytes; the whole parses; SMTP after it is left alone."""
        for cut in range(len(header)):
            self.assertIsNone(parse_proxy_header(header[:cut]), f"prefix of {cut} bytes")
        self.assertEqual(parse_proxy_header(header), (expected, len(header)))
        self.assertEqual(parse_proxy_header(header + SMTP), (expected, len(header)))

    def assertRejected(self, data, fragment=""):
        with self.assertRaises(ProxyError) as cm:
            parse_proxy_header(data)
        self.assertIn(fragment, str(cm.exception))


class V1Tests(ParseMixin, unittest.TestCase):
    def test_tcp4(self):
        self.assertParses(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n",
                          ProxyHeader(1, "PROXY", ("192.0.2.1", 56324), ("198.51.100.2", 25)))

    def test_tcp6(self):
        self.assertParses(b"PROXY TCP6 2001:db8::1 2001:DB8:0:0::2 0 65535\r\n",
                          ProxyHeader(1, "PROXY", ("2001:db8::1", 0), ("2001:db8::2", 65535)))

    def test_tcp6_ipv4_mapped_is_returned_as_given(self):
        result = parse_proxy_header(b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n")
        self.assertEqual(result[0].source, ("::ffff:c000:201", 1))

    def test_unknown(self):
        self.assertParses(b"PROXY UNKNOWN\r\n", ProxyHeader(1, "LOCAL", None, None))

    def test_unknown_with_anything_after(self):
        self.assertParses(b"PROXY UNKNOWN ffff::1 what\x00ever \xff\r\n",
                          ProxyHeader(1, "LOCAL", None, None))

    def test_longest_line_is_accepted(self):
        line = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n"
        self.assertEqual(len(line), V1_MAX)
        self.assertEqual(parse_proxy_header(line), (ProxyHeader(1, "LOCAL", None, None), V1_MAX))

    def test_longest_tcp6_line(self):
        addr = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        line = b"PROXY TCP6 " + addr + b" " + addr + b" 65535 65535\r\n"
        self.assertEqual(len(line), 104)
        self.assertEqual(parse_proxy_header(line)[1], len(line))

    def test_too_long_without_crlf(self):
        self.assertRejected(b"PROXY UNKNOWN " + b"x" * 93, "longer than 107")
        self.assertIsNone(parse_proxy_header(b"PROXY UNKNOWN " + b"x" * 92))
        # the CR at byte 107 would make a 108-byte line
        self.assertRejected(b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n", "longer than 107")

    def test_malformed(self):
        for line in [
            b"PROXY TCP4 192.0.2.300 198.51.100.2 1 2\r\n",  # bad IPv4
            b"PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n",  # leading zero octet
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",  # IPv6 in TCP4
            b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",  # IPv4 in TCP6
            b"PROXY TCP6 2001:db8:::1 2001:db8::2 1 2\r\n",  # bad IPv6
            b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n",  # scoped IPv6
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 25\r\n",  # port too big
            b"PROXY TCP4 192.0.2.1 198.51.100.2 025 25\r\n",  # leading zero port
            b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 25\r\n",  # negative port
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 \r\n",  # empty port
            b"PROXY TCP4 192.0.2.1  198.51.100.2 1 2\r\n",  # double space
            b"PROXY  TCP4 192.0.2.1 198.51.100.2 1 2\r\n",  # double space
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n",  # trailing space
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n",  # missing field
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n",  # extra field
            b"PROXY TCP4\r\n",
            b"PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY \r\n",
            b"PROXY\r\n",
            b"PROX\r\n",
            b"proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n",  # lower case
            b"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",  # bare LF
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 \xd9\xa1 2\r\n",  # non-ASCII digit
            b"EHLO x\r\n",
            b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
        ]:
            with self.subTest(line=line):
                self.assertRejected(line)

    def test_garbage_rejected_at_first_byte(self):
        self.assertRejected(b"E", "not a PROXY")
        self.assertRejected(b"p", "not a PROXY")

    def test_garbage_rejected_before_crlf(self):
        # no need to wait for a line end that could never make it valid
        self.assertRejected(b"PROXX", "start with 'PROXY '")
        self.assertRejected(b"PROXY TCP7", "TCP4, TCP6 or UNKNOWN")
        self.assertRejected(b"PROXY TCP4 192.0.2.1 xyz", "invalid characters")
        self.assertRejected(b"PROXY TCP4 1\n", "invalid characters")

    def test_empty_needs_more(self):
        self.assertIsNone(parse_proxy_header(b""))


class V2Tests(ParseMixin, unittest.TestCase):
    def test_proxy_tcp4(self):
        self.assertParses(v2_tcp4(), ProxyHeader(2, "PROXY", ("192.0.2.1", 12345), ("198.51.100.2", 25)))

    def test_proxy_tcp6(self):
        self.assertParses(v2_tcp6(), ProxyHeader(2, "PROXY", ("2001:db8::1", 40000), ("2001:db8::2", 587)))

    def test_ipv4_mapped_is_returned_as_given(self):
        header = v2_tcp6(src="::ffff:192.0.2.1")
        self.assertEqual(parse_proxy_header(header)[0].source, ("::ffff:c000:201", 40000))

    def test_local(self):
        self.assertParses(v2(0x20, 0x00), ProxyHeader(2, "LOCAL", None, None))

    def test_local_ignores_family_and_address_block(self):
        # proxy-protocol.txt: for LOCAL the receiver discards the protocol block
        for fam in (0x11, 0x21, 0x12, 0x31, 0xFF):
            with self.subTest(fam=fam):
                self.assertParses(v2(0x20, fam, b"\x01" * 5), ProxyHeader(2, "LOCAL", None, None))

    def test_proxy_unspec_is_local(self):
        self.assertParses(v2(0x21, 0x00, b"junk"), ProxyHeader(2, "LOCAL", None, None))

    def test_tlvs_are_skipped(self):
        tlvs = tlv(0x01, b"smtp") + tlv(0x04, b"") + tlv(0x20, b"\x07" + b"\x00" * 4)
        self.assertParses(v2_tcp4(tlvs=tlvs), ProxyHeader(2, "PROXY", ("192.0.2.1", 12345), ("198.51.100.2", 25)))
        self.assertParses(v2_tcp6(tlvs=tlvs), ProxyHeader(2, "PROXY", ("2001:db8::1", 40000), ("2001:db8::2", 587)))

    def test_maximum_length_accepted(self):
        header = v2_tcp4(tlvs=tlv(0xE0, b"x" * (V2_MAX_LENGTH - 12 - 3)))
        self.assertEqual(parse_proxy_header(header)[1], 16 + V2_MAX_LENGTH)

    def test_length_too_large(self):
        # rejected from the length field alone, before the body arrives
        self.assertRejected(v2(0x21, 0x11, length=V2_MAX_LENGTH + 1), "exceeds")
        self.assertRejected(v2(0x21, 0x11, length=0xFFFF), "exceeds")

    def test_length_too_short_for_addresses(self):
        self.assertRejected(v2(0x21, 0x11, b"\x00" * 11), "too short")
        self.assertRejected(v2(0x21, 0x21, b"\x00" * 35), "too short")
        self.assertRejected(v2(0x21, 0x21, b"\x00" * 12), "too short")

    def test_wrong_version(self):
        for ver_cmd in (0x11, 0x31, 0x01, 0xF1):
            with self.subTest(ver_cmd=ver_cmd):
                self.assertRejected(v2_tcp4(ver_cmd=ver_cmd), "version")
                self.assertRejected(v2_tcp4(ver_cmd=ver_cmd)[:13], "version")

    def test_unknown_command(self):
        self.assertRejected(v2_tcp4(ver_cmd=0x22)[:13], "command")
        self.assertRejected(v2_tcp4(ver_cmd=0x2F), "command")

    def test_udp(self):
        self.assertRejected(v2(0x21, 0x12, b"\x00" * 12), "UDP")
        self.assertRejected(v2(0x21, 0x22, b"\x00" * 36)[:14], "UDP")
        self.assertRejected(v2(0x21, 0x02), "UDP")

    def test_af_unix(self):
        self.assertRejected(v2(0x21, 0x31, b"\x00" * 216), "AF_UNIX")
        self.assertRejected(v2(0x21, 0x32)[:14], "AF_UNIX")

    def test_unknown_family_or_transport(self):
        self.assertRejected(v2(0x21, 0x41, b"\x00" * 12), "family")
        self.assertRejected(v2(0x21, 0x13, b"\x00" * 12), "transport")
        self.assertRejected(v2(0x21, 0x10, b"\x00" * 12), "transport")

    def test_bad_signature(self):
        self.assertRejected(b"\r\n\r\n\x00\r\nQUIT\r", "signature")
        self.assertRejected(b"\r\r", "signature")
        self.assertRejected(b"\r\n\r\n\x01", "signature")
        self.assertRejected(b"\r\n" + SMTP, "signature")

    def test_bytes_after_header_belong_to_smtp(self):
        header = v2_tcp4()
        data = header + V2_SIGNATURE  # even something that looks like another header
        self.assertEqual(parse_proxy_header(data)[1], len(header))


# --- property tests -------------------------------------------------------------------

ipv4s = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
ipv6s = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
ports = st.integers(0, 65535)
trailing = st.binary(max_size=40)


def _prefixes():
    """Byte strings that start like a header, so fuzzing gets past the first byte."""
    return st.sampled_from([b"", b"P", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN",
                            V2_SIGNATURE, V2_SIGNATURE + b"\x21", V2_SIGNATURE + b"\x21\x11",
                            V2_SIGNATURE + b"\x20"])


class PropertyTests(unittest.TestCase):
    @settings(max_examples=500)
    @given(st.one_of(st.binary(max_size=300),
                     st.tuples(_prefixes(), st.binary(max_size=200)).map(b"".join),
                     st.tuples(_prefixes(), st.text("0123456789abcdef.: \r\n", max_size=120)
                               .map(str.encode)).map(b"".join)))
    def test_random_bytes_raise_only_proxy_error(self, data):
        try:
            result = parse_proxy_header(data)
        except ProxyError:
            return
        if result is not None:
            header, consumed = result
            self.assertIsInstance(header, ProxyHeader)
            self.assertTrue(0 < consumed <= len(data))

    @given(st.one_of(st.tuples(st.just("TCP4"), ipv4s, ipv4s), st.tuples(st.just("TCP6"), ipv6s, ipv6s)),
           ports, ports, trailing)
    def test_v1_round_trip(self, addrs, sport, dport, rest):
        kind, src, dst = addrs
        line = f"PROXY {kind} {src} {dst} {sport} {dport}\r\n".encode()
        expected = ProxyHeader(1, "PROXY", (str(src), sport), (str(dst), dport))
        self.assertEqual(parse_proxy_header(line + rest), (expected, len(line)))
        self.assertIsNone(parse_proxy_header(line[:-1]))

    @given(st.one_of(st.tuples(st.just(0x11), ipv4s, ipv4s), st.tuples(st.just(0x21), ipv6s, ipv6s)),
           ports, ports, st.binary(max_size=100), trailing)
    def test_v2_round_trip(self, addrs, sport, dport, tlvs, rest):
        fam, src, dst = addrs
        header = v2(0x21, fam, src.packed + dst.packed + struct.pack("!HH", sport, dport) + tlvs)
        expected = ProxyHeader(2, "PROXY", (str(src), sport), (str(dst), dport))
        self.assertEqual(parse_proxy_header(header + rest), (expected, len(header)))
        self.assertIsNone(parse_proxy_header(header[:-1]))
