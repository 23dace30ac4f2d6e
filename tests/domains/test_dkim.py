"""L{mailgw.domains.dkim}: selectors, keys and their DNS records, checked by
reading the records back with C{cryptography} as a verifier would."""
from __future__ import annotations

import base64
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.trial import unittest

from mailgw.domains import dkim


def record_tags(value: str) -> dict:
    """The tag=value pairs of a DKIM key record (RFC 6376 section 3.2)."""
    return dict(part.strip().split("=", 1) for part in value.split(";") if part.strip())


class SelectorTests(unittest.TestCase):
    def test_prefix_and_six_lower_case_letters_or_digits(self):
        selectors = {dkim.new_selector() for _ in range(50)}
        for selector in selectors:
            self.assertRegex(selector, r"^mailgw-[a-z0-9]{6}$")
        self.assertGreater(len(selectors), 45)  # random, not a counter


class KeyTests(unittest.TestCase):
    def test_rsa_key_is_unencrypted_pkcs8_pem_of_2048_bits(self):
        pem = dkim.generate_key()
        self.assertTrue(pem.startswith("-----BEGIN PRIVATE KEY-----\n"))
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        self.assertIsInstance(key, rsa.RSAPrivateKey)
        self.assertEqual(key.key_size, 2048)
        self.assertEqual(dkim.key_algorithm(pem), "rsa")

    def test_rsa_record_carries_the_public_key_as_der_subject_public_key_info(self):
        pem = dkim.generate_key("rsa")
        value = dkim.dns_value(pem)
        self.assertTrue(value.startswith("v=DKIM1; k=rsa; p="))
        tags = record_tags(value)
        self.assertEqual((tags["v"], tags["k"]), ("DKIM1", "rsa"))
        public = serialization.load_der_public_key(base64.b64decode(tags["p"]))
        private = serialization.load_pem_private_key(pem.encode(), password=None)
        self.assertEqual(public.public_numbers(), private.public_key().public_numbers())

    def test_ed25519_record_carries_the_raw_32_byte_key(self):
        pem = dkim.generate_key("ed25519")
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        self.assertIsInstance(key, ed25519.Ed25519PrivateKey)
        self.assertEqual(dkim.key_algorithm(pem), "ed25519")
        tags = record_tags(dkim.dns_value(pem))
        self.assertEqual(tags["k"], "ed25519")
        raw = base64.b64decode(tags["p"])
        self.assertEqual(len(raw), 32)
        self.assertEqual(raw, key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def test_keys_differ(self):
        self.assertNotEqual(dkim.generate_key("ed25519"), dkim.generate_key("ed25519"))

    def test_unknown_algorithm(self):
        self.assertRaises(ValueError, dkim.generate_key, "dsa")


class SplitTests(unittest.TestCase):
    def test_short_value_is_one_string(self):
        self.assertEqual(dkim.split_txt("v=spf1 a mx ~all"), ["v=spf1 a mx ~all"])
        self.assertEqual(dkim.split_txt(""), [""])

    def test_rsa_record_is_split_into_strings_of_at_most_255_bytes(self):
        value = dkim.dns_value(dkim.generate_key())
        strings = dkim.split_txt(value)
        self.assertEqual(len(strings), 2)
        self.assertEqual([len(s) for s in strings][0], 255)
        self.assertEqual("".join(strings), value)

    def test_exactly_255_bytes_stays_whole(self):
        self.assertEqual(dkim.split_txt("a" * 255), ["a" * 255])
        self.assertEqual(dkim.split_txt("a" * 256), ["a" * 255, "a"])

    def test_a_split_never_falls_inside_a_utf8_sequence(self):
        value = "a" + "é" * 200
        strings = dkim.split_txt(value)
        self.assertEqual("".join(strings), value)
        for s in strings:
            self.assertLessEqual(len(s.encode("utf-8")), 255)
        self.assertEqual(len(strings[0].encode("utf-8")), 255)

    def test_zone_text_quotes_and_escapes(self):
        self.assertEqual(dkim.zone_text('a"b\\c'), '"a\\"b\\\\c"')
        quoted = dkim.zone_text("x" * 300)
        self.assertEqual(re.findall(r'"([^"]*)"', quoted), ["x" * 255, "x" * 45])
