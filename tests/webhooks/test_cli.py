"""``mailgw webhook``, run for real as a subprocess: add (its URL and
events checked before the store opens, a private address refused unless
allowed), list, disable/enable, remove, key and deliveries."""
from __future__ import annotations

import io

from twisted.internet import defer

from mailgw.model import MessageEnvelope
from tests.admin.test_cli import CLITestCase


class WebhookCommandTests(CLITestCase):
    def allow_private(self):
        with open(self.config, "a") as f:
            f.write("[webhooks]\nallow_private_addresses = true\n")

    async def test_private_and_malformed_urls_are_refused(self):
        await self.seed()
        for url, why in (
                ("https://127.0.0.1/in", "webhook destination refused: 127.0.0.1 is a local "
                                         "address (loopback, link-local, multicast or this "
                                         "node's) ([webhooks] allow_private_addresses is "
                                         "false)"),
                ("http://192.168.1.20/in", "192.168.1.20 is a private or reserved address"),
                ("http://[::1]:8080/in", "::1 is a local address"),
                ("http://169.254.169.254/latest", "169.254.169.254 is a local address"),
                ("https://localhost/in", "localhost resolves to "),
                ("ftp://hooks.example/", "the scheme must be http or https"),
                ("https://u:p@hooks.example/", "credentials in the URL")):
            line = await self.error("webhook", "add", "acme/web", url, "--all-events")
            self.assertIn(why, line)
        line = await self.error("webhook", "add", "acme/web", "https://1.1.1.1/",
                                "--events", "MessageSent,MessageOpened")
        self.assertIn("unknown webhook event MessageOpened", line)
        line = await self.error("webhook", "add", "acme/web", "https://1.1.1.1/")
        self.assertIn("give --events", line)
        self.assertEqual(await self.json("webhook", "list"), [])

    async def test_add_list_disable_remove(self):
        self.allow_private()
        await self.seed()
        added = await self.json("webhook", "add", "acme/web", "http://127.0.0.1:9/in",
                                "--events", "MessageSent", "MessageHeld,MessageBounced",
                                "--name", "app")
        self.assertEqual((added["server"], added["url"], added["events"], added["enabled"]),
                         ("acme/web", "http://127.0.0.1:9/in",
                          ["MessageBounced", "MessageHeld", "MessageSent"], True))
        every = await self.json("webhook", "add", "acme/web", "https://1.1.1.1/h",
                                "--all-events")
        self.assertTrue(every["all_events"])
        self.assertEqual(len(every["events"]), 6)
        listed = await self.ok("webhook", "list", "acme/web")
        self.assertRegex(listed, r"(?m)^2 +acme/web +https://1\.1\.1\.1/h +all +yes$")
        disabled = await self.json("webhook", "disable", added["uuid"])
        self.assertFalse(disabled["enabled"])
        self.assertTrue((await self.json("webhook", "enable", str(added["id"])))["enabled"])
        self.assertEqual(await self.ok("webhook", "remove", "2"),
                         "removed webhook 2 (https://1.1.1.1/h)\n")
        line = await self.error("webhook", "remove", "2")
        self.assertEqual(line, "mailgw: no webhook 2")

    async def test_key_is_stable_and_public_only(self):
        first = await self.ok("webhook", "key")
        self.assertTrue(first.startswith("-----BEGIN PUBLIC KEY-----\n"), first)
        self.assertTrue(first.endswith("-----END PUBLIC KEY-----\n"), first)
        self.assertEqual(await self.ok("webhook", "key"), first)
        data = await self.json("webhook", "key")
        self.assertEqual(data["public_key"], first)
        self.assertRegex(data["kid"], r"^[0-9a-f]{64}$")

    @defer.inlineCallbacks
    def test_deliveries_lists_the_outbox(self):
        self.allow_private()
        store, server = yield defer.ensureDeferred(self.seed())
        yield store.add_webhook(("acme", "web"), "http://127.0.0.1:9/in", all_events=True)
        yield store.enqueue(MessageEnvelope("TOKEN0000001", server.id, None, "a@good.example",
                                            ("u@dest.example",), "good.example", "smtp",
                                            status="held", hold_reason="credential on hold"),
                            io.BytesIO(b"Subject: s\r\n\r\nbody\r\n"))
        text = yield defer.ensureDeferred(self.ok("webhook", "deliveries"))
        self.assertRegex(text, r"(?m)^1 +\S+ +MessageHeld +1 +pending +0 +-$")
        [request] = yield defer.ensureDeferred(self.json("webhook", "deliveries", "--status",
                                                         "pending"))
        self.assertEqual((request["event"], request["server"], request["delivery_attempts"]),
                         ("MessageHeld", "acme/web", []))
        self.assertEqual((yield defer.ensureDeferred(
            self.json("webhook", "deliveries", "--status", "failed"))), [])


class ConfigCheckTests(CLITestCase):
    async def test_webhooks_shown_and_their_ca_file_checked(self):
        data = await self.json("config", "check")
        self.assertEqual(data["webhooks"], {
            "enabled": True, "allow_private_addresses": False,
            "retry_delays": [120.0, 180.0, 360.0, 600.0, 900.0], "ca_certificates": None})
        self.assertIn("\nwebhooks:        on (private addresses refused; 5 retries; https "
                      "trusts the system's CAs)", await self.ok("config", "check"))
        with open(self.config, "a") as f:
            f.write('[webhooks]\nca_certificates = "missing.pem"\n')
        line = await self.error("config", "check")
        self.assertEqual(line, f"mailgw: config error: webhooks.ca_certificates: cannot read "
                               f"{self.folder}/missing.pem: No such file or directory")
