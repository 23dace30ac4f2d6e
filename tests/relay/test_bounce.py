"""The RFC 3464 bounce, built from a queue entry and a failure: its envelope
(from <>, to the original sender, same server, no credential) and a report
the stdlib email parser reads as multipart/report with delivery-status."""
from __future__ import annotations

import email
import email.policy

from twisted.trial import unittest

from mailgw.model import QueueEntry
from mailgw.relay.bounce import build_bounce, header_section, status_code

ORIGINAL = (b"Received: from client by mx.mailgw.test\r\n"
            b"From: App <app@good.example>\r\nTo: user@dest.test\r\n"
            b"Subject: invoice 42\r\n\r\nthe body, which the bounce leaves out\r\n")


def entry(**kw):
    values = dict(id=7, message_id=3, token="ABCDEF123456", server="acme/web", server_id=2,
                  credential_id=5, mail_from="app@good.example", rcpt_to="user@dest.test",
                  status="queued", size=len(ORIGINAL), domain="good.example",
                  created_at=1_700_000_000.0)
    values.update(kw)
    return QueueEntry(**values)


def parse(body: bytes):
    return email.message_from_bytes(body, policy=email.policy.default)


class BounceTests(unittest.SynchronousTestCase):
    def build(self, **kw):
        args = dict(hostname="relay.mailgw.test", now=1_700_000_600.0, code=550,
                    text="550 5.1.1 <user@dest.test>: Recipient address rejected",
                    remote_host="mx1.dest.test [127.0.0.1]", expired=False,
                    original_head=ORIGINAL)
        args.update(kw)
        return build_bounce(entry(), **args)

    def test_envelope(self):
        envelope, _ = self.build()
        self.assertEqual((envelope.mail_from, envelope.rcpt_to, envelope.server_id,
                          envelope.credential_id, envelope.status, envelope.protocol),
                         ("", ("app@good.example",), 2, None, "queued", "bounce"))
        self.assertRegex(envelope.token, r"^[A-Z0-9]{12}$")

    def test_report_structure(self):
        _, body = self.build()
        self.assertNotIn(b"\r\r\n", body)
        self.assertNotIn(b"\n", body.replace(b"\r\n", b""))
        message = parse(body)
        self.assertEqual(message["To"].addresses[0].addr_spec, "app@good.example")
        self.assertEqual(message["Auto-Submitted"], "auto-replied")
        self.assertEqual(message.get_content_type(), "multipart/report")
        self.assertEqual(message.get_param("report-type"), "delivery-status")
        parts = list(message.iter_parts())
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        self.assertIn("ABCDEF123456", parts[0].get_content())
        per_message, per_recipient = parts[1].get_payload()
        self.assertEqual(per_message["Reporting-MTA"], "dns; relay.mailgw.test")
        self.assertEqual(per_recipient["Final-Recipient"], "rfc822; user@dest.test")
        self.assertEqual(per_recipient["Action"], "failed")
        self.assertEqual(per_recipient["Status"], "5.1.1")
        self.assertEqual(per_recipient["Remote-MTA"], "dns; mx1.dest.test")
        self.assertEqual(per_recipient["Diagnostic-Code"],
                         "smtp; 550 5.1.1 <user@dest.test>: Recipient address rejected")
        headers = parts[2].get_payload()
        self.assertIn("Subject: invoice 42", headers)
        self.assertNotIn("the body", headers)

    def test_expired_without_reply(self):
        _, body = self.build(code=None, text="connection refused", remote_host=None,
                             expired=True)
        per_recipient = list(parse(body).iter_parts())[1].get_payload()[1]
        self.assertEqual(per_recipient["Status"], "4.4.7")
        self.assertIsNone(per_recipient["Diagnostic-Code"])
        self.assertIsNone(per_recipient["Remote-MTA"])

    def test_reply_text_cannot_inject_headers(self):
        _, body = self.build(text="550 nope\r\nX-Injected: yes\r\n\r\nBody")
        per_recipient = list(parse(body).iter_parts())[1].get_payload()[1]
        self.assertIsNone(per_recipient["X-Injected"])
        self.assertEqual(per_recipient["Diagnostic-Code"], "smtp; 550 nope X-Injected: yes Body")

    def test_null_sender_is_never_bounced(self):
        self.assertRaises(ValueError, build_bounce, entry(mail_from=""), hostname="h", now=0,
                          code=550, text="550 x", remote_host=None, expired=False,
                          original_head=b"")

    def test_status_code(self):
        self.assertEqual(status_code(550, "550 5.7.1 spam", False), "5.7.1")
        self.assertEqual(status_code(550, "550 rejected", False), "5.0.0")
        self.assertEqual(status_code(451, "451 4.3.0 later", True), "4.3.0")
        self.assertEqual(status_code(None, "connection refused", True), "4.4.7")

    def test_header_section(self):
        self.assertEqual(header_section(ORIGINAL), ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n")
        self.assertEqual(header_section(b"A: b\r\nC: d\r\nno end"), b"A: b\r\nC: d\r\n")
        self.assertEqual(header_section(b""), b"")
