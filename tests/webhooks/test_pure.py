"""The pure parts of webhooks: Postal's payload shapes and request body,
the signatures and their key id, and the private address rule."""
from __future__ import annotations

import hashlib
import ipaddress
import json

from cryptography.hazmat.primitives import serialization
from twisted.trial import unittest

from mailgw.model import QueueEntry, Webhook
from mailgw.webhooks import addresses, payloads, signing
from tests.webhooks.receiver import BOUNCE_KEYS, DELIVERY_KEYS, MESSAGE_KEYS, Hit, verify
from tests.webhooks.test_service import signing_key

ENTRY = QueueEntry(id=7, message_id=3, token="ABCDEF123456", server="acme/web", server_id=1,
                   credential_id=1, mail_from="app@good.example", rcpt_to="u@dest.example",
                   status="sent", size=100, domain="good.example", created_at=1000.5)


class PayloadTests(unittest.TestCase):
    def test_header_facts(self):
        head = (b"Subject: =?utf-8?q?caf=C3=A9?=\r\n  menu\r\nMessage-ID:  <a.b@c>\r\n\r\n"
                b"Subject: not this\r\n")
        self.assertEqual(payloads.header_facts(head), ("caf\u00e9 menu", "a.b@c"))
        self.assertEqual(payloads.header_facts(b"From: x\r\n\r\n"), (None, None))
        self.assertEqual(payloads.header_facts(None), (None, None))
        self.assertEqual(payloads.header_facts(b"Subject: \xff\xfe\r\n\r\n")[0], "\ufffd\ufffd")

    def test_shapes_are_postals(self):
        message = payloads.message_hash(ENTRY, "hi", "id@x")
        self.assertEqual(set(message), MESSAGE_KEYS)
        self.assertEqual((message["id"], message["token"], message["to"], message["from"]),
                         (7, "ABCDEF123456", "u@dest.example", "app@good.example"))
        for event, status in payloads.DELIVERY_STATUS.items():
            payload = payloads.delivery_payload(event, message, details="d", output="x" * 600,
                                                timestamp=2.0)
            self.assertEqual(set(payload), DELIVERY_KEYS)
            self.assertEqual((payload["status"], len(payload["output"])), (status, 512))
        self.assertEqual(set(payloads.bounce_payload(message, message)), BOUNCE_KEYS)

    def test_body(self):
        body = payloads.request_body("MessageSent", 5.5, {"a": "\u00e9"}, "u-1")
        self.assertEqual(json.loads(body), {"event": "MessageSent", "timestamp": 5.5,
                                            "payload": {"a": "\u00e9"}, "uuid": "u-1"})

    def test_details(self):
        self.assertEqual(payloads.delivery_details("MessageSent", ENTRY, "mx"),
                         "Message for u@dest.example accepted by mx")
        self.assertEqual(payloads.delivery_details("MessageHeld", ENTRY, None,
                                                   hold_reason="credential on hold"),
                         "Credential is configured to hold all messages authenticated by it.")


class SigningTests(unittest.TestCase):
    def test_both_signatures_verify_and_the_kid_is_the_key_digest(self):
        signer = signing.RequestSigner(signing_key())
        body = b'{"event":"MessageSent"}'
        headers = {k.lower(): v for k, v in signer.headers(body).items()}
        verify(signer.public_pem.encode(), Hit(b"POST", b"/", headers, body, 200))
        public = serialization.load_pem_public_key(signer.public_pem.encode())
        self.assertEqual(headers["x-postal-signature-kid"], hashlib.sha256(public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.PKCS1)).hexdigest())
        self.assertTrue(signing.verify(signer.public_pem, body, headers["x-postal-signature-256"]))
        self.assertTrue(signing.verify(signer.public_pem, body, headers["x-postal-signature"],
                                       sha256=False))
        self.assertFalse(signing.verify(signer.public_pem, body + b" ",
                                        headers["x-postal-signature-256"]))
        with self.assertRaises(AssertionError):
            verify(signer.public_pem.encode(), Hit(b"POST", b"/", headers, body + b"x", 200))

    def test_no_secret_in_repr(self):
        signer = signing.RequestSigner(signing_key())
        self.assertEqual(repr(signer), f"<RequestSigner kid={signer.kid}>")


class AddressTests(unittest.TestCase):
    def test_url_form(self):
        target = addresses.parse_url("https://hooks.example:8443/in?x=1")
        self.assertEqual((target.scheme, target.host, target.port),
                         ("https", "hooks.example", 8443))
        self.assertEqual(addresses.parse_url("http://[2001:db8::1]/").port, 80)
        for bad in ("ftp://x/", "https://user:pw@x/", "https:///x", "https://x:99999/",
                    "https://x y/", "https://h\u00e9.example/"):
            with self.assertRaises(addresses.RefusedURL, msg=bad):
                addresses.parse_url(bad)

    def test_errors_and_reprs_leave_the_query_string_out(self):
        with self.assertRaises(addresses.RefusedURL) as caught:
            addresses.parse_url("ftp://hooks.example/in?token=s3cret")
        self.assertNotIn("s3cret", str(caught.exception))
        self.assertEqual(addresses.shown_url("https://h/in?token=s3cret"), "https://h/in?…")
        webhook = Webhook(1, "u", 1, "acme/web", "", "https://h/?token=s3cret", True, (), True,
                          0.0)
        self.assertNotIn("s3cret", repr(webhook))

    def test_refused_addresses(self):
        for address in ("127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1",
                        "169.254.169.254", "fc00::1", "fe80::1", "0.0.0.0", "100.64.0.1",
                        "::ffff:127.0.0.1", "224.0.0.1"):
            self.assertIsNotNone(addresses.refusal(address), address)
        self.assertIsNone(addresses.refusal("93.184.216.34"))
        own = frozenset({ipaddress.ip_address("93.184.216.34")})
        self.assertIsNotNone(addresses.refusal("93.184.216.34", own))

    def test_a_name_with_one_private_address_is_refused_whole(self):
        with self.assertRaises(addresses.RefusedURL) as caught:
            addresses.choose("hooks.example", ["93.184.216.34", "10.0.0.5"], False)
        self.assertIn("hooks.example resolves to 10.0.0.5, a private or reserved address",
                      str(caught.exception))
        self.assertEqual(addresses.choose("hooks.example", ["10.0.0.5", "::1"], True),
                         ["10.0.0.5", "::1"])
        self.assertEqual(addresses.check_now(addresses.parse_url("https://127.0.0.1/"), True),
                         ["127.0.0.1"])
