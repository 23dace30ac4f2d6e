"""Healthy clients are not locked out, against the real gateway: Python's
smtplib (and so Django's SMTP backend) tries CRAM-MD5 with the user name
"any", is refused, and falls back to PLAIN with the key. Those refusals are
followed by a success in the same connection, so they do not count
(docs/operations.md); 25 sends in a row from one address all go through,
with the default throttle (10 failures) and loopback not exempt."""
from __future__ import annotations

import smtplib

from tests.e2e.test_submission import GatewayTestBase

MESSAGE = b"From: app@good.example\r\nSubject: fallback\r\n\r\nhello\r\n"


class SMTPLibFallbackTests(GatewayTestBase):
    def test_25_smtplib_logins_from_one_address(self):
        for n in range(25):
            with smtplib.SMTP("127.0.0.1", self.gateway.port(), timeout=30) as client:
                client.ehlo("app.example")
                code, text = client.login("any", self.key)
                self.assertEqual((code, text), (235, b"Granted for acme/web"), n)
                client.sendmail("app@good.example", ["user@dest.example"], MESSAGE)
        self.assertEqual(len(self.queue()), 25)
        log = self.gateway.log()
        self.assertNotIn("Authentication failure for", log)
        self.assertIn("1 failed attempt(s) before this authentication not counted", log)
