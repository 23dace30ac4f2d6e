"""The operator's queue verbs the relay brought, run as the real ``mailgw``
command: ``queue release|retry|remove ID`` and the delivery attempts that
``queue show ID`` lists."""
from __future__ import annotations

import io

from mailgw.model import DeliveryAttempt, MessageEnvelope, generate_token
from tests.admin import test_cli

RAW = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: held\r\n\r\nbody\r\n"


class QueueVerbTests(test_cli.CLITestCase):
    async def enqueue(self, rcpts=("b@example.net",), status="queued", hold_reason=None):
        store, server = await self.seed()
        envelope = MessageEnvelope(
            token=generate_token(12), server_id=server.id, credential_id=None,
            mail_from="a@example.com", rcpt_to=tuple(rcpts), sender_domain="example.com",
            protocol="esmtpsa", status=status, hold_reason=hold_reason)
        ids = await store.enqueue(envelope, io.BytesIO(RAW))
        return store, ids

    async def test_release_held_entry(self):
        store, ids = await self.enqueue(status="held", hold_reason="development mode")
        entry_id = str(ids["b@example.net"])
        held = await self.json("queue", "list", "--status", "held")
        self.assertEqual([e["id"] for e in held], [ids["b@example.net"]])
        released = await self.json("queue", "release", entry_id)
        self.assertEqual((released["status"], released["hold_reason"]), ("queued", None))
        self.assertEqual(await self.json("queue", "list", "--status", "held"), [])
        self.assertEqual(await self.error("queue", "release", entry_id),
                         f"mailgw: queue entry {entry_id} is queued, not held")

    async def test_retry_failed_entry(self):
        store, ids = await self.enqueue()
        entry_id = ids["b@example.net"]
        await store.claim_due("n", 1e12, 60, 10)
        await store.mark_failed(entry_id, "n", DeliveryAttempt(
            entry_id, 1e12, "mx.example.net [192.0.2.1]", 550, "550 5.1.1 unknown", "n"))
        self.assertEqual((await store.get_entry(entry_id)).status, "failed")
        retried = await self.json("queue", "retry", str(entry_id))
        self.assertEqual((retried["status"], retried["last_error"]),
                         ("queued", "550 5.1.1 unknown"))
        await store.claim_due("n", 1e12, 60, 10)
        await store.mark_sent(entry_id, "n", DeliveryAttempt(entry_id, 1e12, None, 250, "ok"))
        self.assertEqual(await self.error("queue", "retry", str(entry_id)),
                         f"mailgw: queue entry {entry_id} is sent, not failed or queued")

    async def test_remove(self):
        store, ids = await self.enqueue(rcpts=("b@example.net", "c@example.net"))
        entry_id = ids["b@example.net"]
        self.assertEqual(await self.ok("queue", "remove", str(entry_id)),
                         f"removed queue entry {entry_id}\n")
        self.assertEqual([e["rcpt_to"] for e in await self.json("queue", "list")],
                         ["c@example.net"])
        self.assertEqual(await self.error("queue", "remove", str(entry_id)),
                         f"mailgw: no queue entry {entry_id}")

    async def test_show_lists_the_attempts(self):
        store, ids = await self.enqueue()
        entry_id = ids["b@example.net"]
        await store.record_attempt(DeliveryAttempt(
            entry_id, 1_700_000_000.0, "mx.example.net [192.0.2.1]", 451,
            "451 4.7.1 greylisted\x1b[2J", "node-a"))
        data = await self.json("queue", "show", str(entry_id))
        self.assertEqual(data["delivery_attempts"], [{
            "attempted_at": "2023-11-14T22:13:20Z", "node": "node-a",
            "remote_host": "mx.example.net [192.0.2.1]", "code": 451,
            "text": "451 4.7.1 greylisted\x1b[2J"}])
        self.assertEqual((data["attempts"], data["headers"]),
                         (1, "From: a@example.com\nTo: b@example.net\nSubject: held"))
        text = await self.ok("queue", "show", str(entry_id))
        self.assertIn("delivery attempts:\nWHEN", text)
        self.assertIn("2023-11-14T22:13:20Z  mx.example.net [192.0.2.1]  451   "
                      "451 4.7.1 greylisted\\x1b[2J", text)
        self.assertNotIn("\x1b", text)
