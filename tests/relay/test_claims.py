"""The relay's side of the store (L{mailgw.interfaces.IRelayQueue}), written
once and run on SQLite and on PostgreSQL: claims and leases (disjoint under
concurrent nodes, taken over once expired, SKIP LOCKED on PostgreSQL), only
the holder settles, a failure and its bounce commit together, the operator's
release / retry / remove, and bodies read piece by piece."""
from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from mailgw.interfaces import Conflict, NotFound
from mailgw.model import DeliveryAttempt, MessageEnvelope, generate_token
from mailgw.store.base import CHUNK_SIZE
from tests.helpers import make_store
from tests.relay.fixtures import PostgresFixture, StoreFixture
from tests.relay.sink import text_body


class ClaimContract(StoreFixture):
    """What IRelayQueue promises, on every engine."""

    @defer.inlineCallbacks
    def test_claim_leases_due_entries_once(self):
        ids = yield self.enqueue(rcpts=("a@dest.test", "b@dest.test"))
        yield self.enqueue(status="held", hold_reason="credential on hold")
        now = self.clock.seconds()
        claims = yield self.store.claim_due("node-a", now, 300, 10)
        self.assertEqual(sorted(c.entry.id for c in claims), sorted(ids.values()))
        for claim in claims:
            self.assertEqual(claim.locked_until, now + 300)
            self.assertEqual(claim.age_from, claim.entry.created_at)
            self.assertEqual(claim.entry.status, "queued")
        self.assertEqual((yield self.store.claim_due("node-b", now + 299, 300, 10)), [])
        taken = yield self.store.claim_due("node-b", now + 300, 300, 10)
        self.assertEqual(len(taken), 2)
        lock = yield self.lock_of(ids["a@dest.test"])
        self.assertEqual(lock[:2], ("node-b", now + 600))

    @defer.inlineCallbacks
    def test_claim_respects_due_time_and_limit(self):
        for _ in range(5):
            yield self.enqueue()
        entries = yield self.store.list_entries()
        first_due = min(e.next_attempt_at for e in entries)
        self.assertEqual((yield self.store.claim_due("n", first_due - 1, 60, 10)), [])
        claims = yield self.store.claim_due("n", self.clock.seconds(), 60, 3)
        self.assertEqual([c.entry.id for c in claims], [e.id for e in entries[:3]])

    @defer.inlineCallbacks
    def test_concurrent_claims_are_disjoint(self):
        """Three nodes on three connections claim at once until nothing is
        left: every entry is claimed exactly once."""
        for _ in range(6):
            yield self.enqueue(rcpts=[f"r{i}@dest.test" for i in range(5)])
        stores = [self.store]
        for _ in range(2):
            stores.append((yield make_store(self, self.store_location)))
        now = self.clock.seconds()
        seen = []
        while True:
            rounds = yield defer.gatherResults([
                s.claim_due(f"node-{i}", now, 300, 4) for i, s in enumerate(stores)])
            got = [c.entry.id for claims in rounds for c in claims]
            if not got:
                break
            seen += got
        self.assertEqual(len(seen), 30)
        self.assertEqual(len(set(seen)), 30)

    @defer.inlineCallbacks
    def test_only_the_holder_settles(self):
        ids = yield self.enqueue()
        entry_id = ids["to@dest.test"]
        now = self.clock.seconds()
        yield self.store.claim_due("node-a", now, 300, 10)
        attempt = DeliveryAttempt(entry_id, now + 1, "sink", 250, "250 ok", "node-b")
        self.assertFalse((yield self.store.mark_sent(entry_id, "node-b", attempt)))
        self.assertEqual((yield self.store.get_entry(entry_id)).status, "queued")
        attempt = DeliveryAttempt(entry_id, now + 2, "sink", 250, "250 ok", "node-a")
        self.assertTrue((yield self.store.mark_sent(entry_id, "node-a", attempt)))
        entry = yield self.store.get_entry(entry_id)
        self.assertEqual((entry.status, entry.attempts, entry.last_error), ("sent", 2, None))
        self.assertEqual((yield self.lock_of(entry_id))[:2], (None, None))
        attempts = yield self.store.get_attempts(entry_id)
        self.assertEqual([(x.node, x.code) for x in attempts],
                         [("node-b", 250), ("node-a", 250)])

    @defer.inlineCallbacks
    def test_retry_failed_and_bounce_in_one_transaction(self):
        ids = yield self.enqueue(rcpts=("a@dest.test", "b@dest.test"))
        now = self.clock.seconds()
        yield self.store.claim_due("n", now, 300, 10)
        a_id, b_id = ids["a@dest.test"], ids["b@dest.test"]
        yield self.store.mark_retry(a_id, "n", DeliveryAttempt(
            a_id, now, "mx", 451, "451 4.3.0 later", "n"), now + 60)
        entry = yield self.store.get_entry(a_id)
        self.assertEqual((entry.status, entry.next_attempt_at, entry.last_error),
                         ("queued", now + 60, "451 4.3.0 later"))
        bounce = (MessageEnvelope(token=generate_token(12), server_id=self.tenancy["web"].id,
                                  credential_id=None, mail_from="", rcpt_to=("app@good.example",),
                                  sender_domain=None, protocol="bounce"), b"report\r\n")
        self.assertTrue((yield self.store.mark_failed(b_id, "n", DeliveryAttempt(
            b_id, now, "mx", 550, "550 no", "n"), bounce)))
        self.assertFalse((yield self.store.mark_failed(b_id, "n", DeliveryAttempt(
            b_id, now, "mx", 550, "550 no", "n"), bounce)))  # not queued any more
        bounces = [e for e in (yield self.store.list_entries()) if e.mail_from == ""]
        self.assertEqual(len(bounces), 1)
        self.assertEqual((bounces[0].rcpt_to, bounces[0].credential_id, bounces[0].status),
                         ("app@good.example", None, "queued"))

    @defer.inlineCallbacks
    def test_release_leases(self):
        ids = yield self.enqueue()
        entry_id = ids["to@dest.test"]
        now = self.clock.seconds()
        yield self.store.claim_due("n", now, 300, 10)
        self.assertEqual((yield self.store.renew_leases("n", [entry_id], now + 900)), 1)
        self.assertEqual((yield self.store.renew_leases("other", [entry_id], now + 1)), 0)
        self.assertEqual((yield self.lock_of(entry_id))[1], now + 900)
        self.assertEqual((yield self.store.release_leases("n", [entry_id])), 1)
        self.assertEqual(len((yield self.store.claim_due("m", now, 300, 10))), 1)

    @defer.inlineCallbacks
    def test_release_retry_remove(self):
        held = (yield self.enqueue(status="held", hold_reason="development mode"))["to@dest.test"]
        yield self.assertFailure(self.store.retry_entry(held), Conflict)
        entry = yield self.store.release_entry(held)
        self.assertEqual((entry.status, entry.hold_reason), ("queued", None))
        yield self.assertFailure(self.store.release_entry(held), Conflict)
        claims = yield self.store.claim_due("n", self.clock.seconds(), 300, 10)
        self.assertEqual(claims[0].age_from, entry.next_attempt_at)
        yield self.store.mark_failed(held, "n", DeliveryAttempt(held, 1.0, None, None, "x"))
        self.assertEqual((yield self.store.retry_entry(held)).status, "queued")
        yield self.assertFailure(self.store.remove_entry(10 ** 9), NotFound)
        yield self.assertFailure(self.store.release_entry(10 ** 9), NotFound)

    @defer.inlineCallbacks
    def test_remove_last_recipient_removes_the_message(self):
        ids = yield self.enqueue(rcpts=("a@dest.test", "b@dest.test"))
        entry = yield self.store.get_entry(ids["a@dest.test"])
        yield self.store.remove_entry(ids["a@dest.test"])
        self.assertIsNotNone((yield self.store.read_body_chunk(entry.message_id, 0)))
        yield self.store.remove_entry(ids["b@dest.test"])
        self.assertIsNone((yield self.store.read_body_chunk(entry.message_id, 0)))
        self.assertEqual((yield self.store.list_entries()), [])

    @defer.inlineCallbacks
    def test_body_in_chunks(self):
        body = text_body(2 * CHUNK_SIZE + 10)
        ids = yield self.enqueue(body=body)
        entry = yield self.store.get_entry(ids["to@dest.test"])
        chunks = []
        for seq in range(4):
            chunks.append((yield self.store.read_body_chunk(entry.message_id, seq)))
        self.assertEqual([len(c) for c in chunks[:2]], [CHUNK_SIZE, CHUNK_SIZE])
        self.assertIsNone(chunks[3])
        self.assertEqual(b"".join(chunks[:3]), body)


class SQLiteClaimTests(ClaimContract, unittest.TestCase):
    def test_no_row_locks_needed(self):
        """BEGIN IMMEDIATE already admits one writer at a time."""
        self.assertEqual(self.store.claim_lock, "")


class PostgresClaimTests(PostgresFixture, ClaimContract, unittest.TestCase):
    @defer.inlineCallbacks
    def test_rows_another_node_is_claiming_are_skipped_not_waited_for(self):
        """While another node's claim transaction holds two rows, a claim
        takes the others at once (FOR UPDATE SKIP LOCKED) instead of waiting."""
        import psycopg2
        self.assertEqual(self.store.claim_lock, " FOR UPDATE SKIP LOCKED")
        ids = yield self.enqueue(rcpts=[f"r{i}@dest.test" for i in range(4)])
        other = psycopg2.connect(self.store_location)
        self.addCleanup(other.close)
        with other.cursor() as cursor:  # psycopg2 opens a transaction and keeps it
            cursor.execute("SELECT id FROM queue ORDER BY id LIMIT 2 FOR UPDATE")
            locked = sorted(r[0] for r in cursor.fetchall())
        claims = yield self.store.claim_due("node-b", self.clock.seconds(), 300, 10)
        self.assertEqual(sorted(c.entry.id for c in claims),
                         sorted(set(ids.values()) - set(locked)))
        other.rollback()
        claims = yield self.store.claim_due("node-c", self.clock.seconds(), 300, 10)
        self.assertEqual(sorted(c.entry.id for c in claims), locked)
