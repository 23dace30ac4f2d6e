"""The webhooks' side of the store (L{mailgw.interfaces.IWebhookStore}),
written once and run on SQLite and on PostgreSQL: webhooks and their events;
each event written by the transaction of the change that causes it (and not
when that change does not happen); claims disjoint across nodes and taken
over once their lease passes; only the holder settles; the signing key the
same for every node."""
from __future__ import annotations

import json

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mailgw.interfaces import IWebhookStore, NotFound
from mailgw.model import DeliveryAttempt, MessageEnvelope, WebhookAttempt
from tests.helpers import make_store
from tests.relay.fixtures import PostgresFixture, StoreFixture
from tests.webhooks.receiver import BOUNCE_KEYS, DELIVERY_KEYS, MESSAGE_KEYS

URL = "https://hooks.example/in"


class WebhookStoreContract(StoreFixture):
    """What IWebhookStore promises, on every engine."""

    def test_provides_the_interface(self):
        self.assertTrue(verifyObject(IWebhookStore, self.store))

    @defer.inlineCallbacks
    def requests(self, **filters):
        found = yield self.store.list_webhook_requests(**filters)
        return [(r, json.loads(r.body)) for r, _ in found]

    @defer.inlineCallbacks
    def test_add_list_enable_remove(self):
        a = yield self.store.add_webhook(("acme", "web"), URL, name="a",
                                         events=["MessageSent", "MessageHeld"])
        b = yield self.store.add_webhook(("acme", "other"), URL, all_events=True)
        self.assertEqual((a.server, a.events, a.all_events, a.enabled),
                         ("acme/web", ("MessageHeld", "MessageSent"), False, True))
        self.assertEqual([w.id for w in (yield self.store.list_webhooks())], [a.id, b.id])
        self.assertEqual([w.id for w in (yield self.store.list_webhooks(("acme", "other")))],
                         [b.id])
        self.assertEqual((yield self.store.get_webhook(a.uuid)).id, a.id)
        disabled = yield self.store.set_webhook_enabled(a.id, False)
        self.assertFalse(disabled.enabled)
        yield self.store.remove_webhook(b.uuid)
        yield self.assertFailure(self.store.get_webhook(b.id), NotFound)
        yield self.assertFailure(self.store.add_webhook(("acme", "web"), URL,
                                                        events=["Nope"]), ValueError)
        yield self.assertFailure(self.store.add_webhook(("acme", "web"), URL), ValueError)
        yield self.assertFailure(self.store.add_webhook(("acme", "gone"), URL,
                                                        all_events=True), NotFound)

    @defer.inlineCallbacks
    def settle_one(self, how, **kwargs):
        ids = yield self.enqueue(**kwargs)
        [claim] = yield self.store.claim_due("relay", self.clock.seconds(), 60, 10)
        now = self.clock.seconds()
        if how == "sent":
            attempt = DeliveryAttempt(claim.entry.id, now, "mx.dest.test", 250, "250 ok")
            yield self.store.mark_sent(claim.entry.id, "relay", attempt)
        elif how == "retry":
            attempt = DeliveryAttempt(claim.entry.id, now, "mx.dest.test", 451, "451 later")
            yield self.store.mark_retry(claim.entry.id, "relay", attempt, now + 60)
        else:
            attempt = DeliveryAttempt(claim.entry.id, now, "mx.dest.test", 550, "550 gone")
            bounce = (MessageEnvelope("BOUNCE000001", self.tenancy["web"].id, None, "",
                                      ("app@good.example",), None, "bounce"),
                      b"From: MAILER-DAEMON@mx.mailgw.test\r\nSubject: failed\r\n\r\nx\r\n")
            yield self.store.mark_failed(claim.entry.id, "relay", attempt, bounce)
        return list(ids.values())[0]

    @defer.inlineCallbacks
    def test_each_settle_writes_its_event(self):
        yield self.store.add_webhook(("acme", "web"), URL, all_events=True)
        sent = yield self.settle_one("sent")
        [(request, body)] = yield self.requests()
        self.assertEqual((request.event, request.status, request.attempts),
                         ("MessageSent", "pending", 0))
        self.assertEqual(set(body), {"event", "timestamp", "payload", "uuid"})
        self.assertEqual((body["event"], body["uuid"]), ("MessageSent", request.uuid))
        self.assertEqual(set(body["payload"]), DELIVERY_KEYS)
        self.assertEqual(set(body["payload"]["message"]), MESSAGE_KEYS)
        self.assertEqual(body["payload"]["message"]["id"], sent)
        self.assertEqual(body["payload"]["message"]["subject"], "relay test")
        self.assertEqual((body["payload"]["status"], body["payload"]["output"]),
                         ("Sent", "250 ok"))

        yield self.settle_one("retry")
        found = yield self.requests(status="pending")
        self.assertEqual(found[0][1]["event"], "MessageDelayed")
        self.assertEqual(found[0][1]["payload"]["status"], "SoftFail")

        failed = yield self.settle_one("failed")
        found = yield self.requests()
        events = {b["event"]: b for _, b in found[:2]}
        self.assertEqual(set(events), {"MessageDeliveryFailed", "MessageBounced"})
        self.assertEqual(events["MessageDeliveryFailed"]["payload"]["status"], "HardFail")
        bounced = events["MessageBounced"]["payload"]
        self.assertEqual(set(bounced), BOUNCE_KEYS)
        self.assertEqual(bounced["original_message"]["id"], failed)
        self.assertEqual((bounced["bounce"]["token"], bounced["bounce"]["subject"]),
                         ("BOUNCE000001", "failed"))

    @defer.inlineCallbacks
    def test_held_by_the_relay(self):
        yield self.store.add_webhook(("acme", "web"), URL, events=["MessageHeld"])
        ids = yield self.enqueue()
        [claim] = yield self.store.claim_due("relay", self.clock.seconds(), 60, 10)
        attempt = DeliveryAttempt(claim.entry.id, self.clock.seconds(), None, None,
                                  "held: no DKIM key", "relay")
        self.assertTrue((yield self.store.mark_held(claim.entry.id, "relay", attempt,
                                                    "no DKIM key")))
        [(_, body)] = yield self.requests()
        self.assertEqual((body["event"], body["payload"]["status"],
                          body["payload"]["details"], body["payload"]["output"]),
                         ("MessageHeld", "Held", "Message held: no DKIM key", ""))
        self.assertEqual(body["payload"]["message"]["id"], list(ids.values())[0])

    @defer.inlineCallbacks
    def test_held_at_enqueue_and_only_wanted_events(self):
        yield self.store.add_webhook(("acme", "web"), URL, events=["MessageHeld"])
        other = yield self.store.add_webhook(("acme", "other"), URL, all_events=True)
        off = yield self.store.add_webhook(("acme", "web"), URL, all_events=True)
        yield self.store.set_webhook_enabled(off.id, False)
        ids = yield self.enqueue(rcpts=("a@dest.test", "b@dest.test"), status="held",
                                 hold_reason="server in development mode")
        found = yield self.requests()
        self.assertEqual(sorted(b["payload"]["message"]["id"] for _, b in found),
                         sorted(ids.values()))
        for _, body in found:
            self.assertEqual((body["event"], body["payload"]["status"],
                              body["payload"]["details"]),
                             ("MessageHeld", "Held", "Server is in development mode."))
        yield self.settle_one("sent")  # MessageSent: nobody of acme/web wants it
        self.assertEqual(len((yield self.requests())), 2)
        self.assertEqual((yield self.requests(webhook=other.id)), [])

    @defer.inlineCallbacks
    def test_a_settle_that_does_not_happen_writes_nothing(self):
        yield self.store.add_webhook(("acme", "web"), URL, all_events=True)
        yield self.enqueue()
        [claim] = yield self.store.claim_due("relay-a", self.clock.seconds(), 60, 10)
        attempt = DeliveryAttempt(claim.entry.id, self.clock.seconds(), "mx", 250, "250 ok")
        held = yield self.store.mark_sent(claim.entry.id, "relay-b", attempt)
        self.assertFalse(held)
        self.assertEqual((yield self.requests()), [])

    @defer.inlineCallbacks
    def outbox(self, count):
        yield self.store.add_webhook(("acme", "web"), URL, all_events=True)
        for _ in range(count):
            yield self.enqueue(status="held", hold_reason="credential on hold")
        return [r for r, _ in (yield self.requests())]

    @defer.inlineCallbacks
    def test_claims_are_disjoint_and_taken_over_after_the_lease(self):
        made = yield self.outbox(5)
        now = self.clock.seconds()
        a = yield self.store.claim_webhook_requests("a", now, 60, 3)
        b = yield self.store.claim_webhook_requests("b", now, 60, 10)
        self.assertEqual(sorted(r.id for r in a + b), sorted(r.id for r in made))
        self.assertEqual((yield self.store.claim_webhook_requests("c", now + 59, 60, 10)), [])
        renewed = yield self.store.renew_webhook_leases("a", [r.id for r in a], now + 120)
        self.assertEqual(renewed, 3)
        taken = yield self.store.claim_webhook_requests("c", now + 60, 60, 10)
        self.assertEqual(sorted(r.id for r in taken), sorted(r.id for r in b))
        released = yield self.store.release_webhook_leases("a", [r.id for r in a])
        self.assertEqual(released, 3)
        again = yield self.store.claim_webhook_requests("d", now + 61, 60, 10)
        self.assertEqual(sorted(r.id for r in again), sorted(r.id for r in a))

    @defer.inlineCallbacks
    def test_concurrent_nodes_claim_each_request_once(self):
        made = yield self.outbox(12)
        stores = [self.store]
        for _ in range(2):
            stores.append((yield make_store(self, self.store_location)))
        now = self.clock.seconds()
        results = yield defer.gatherResults([
            s.claim_webhook_requests(f"node-{i}", now, 60, 5)
            for i, s in enumerate(stores) for _ in range(2)])
        claimed = [r.id for batch in results for r in batch]
        self.assertEqual(sorted(claimed), sorted(r.id for r in made))

    @defer.inlineCallbacks
    def test_only_the_holder_settles_and_attempts_are_kept(self):
        [made] = yield self.outbox(1)
        now = self.clock.seconds()
        [request] = yield self.store.claim_webhook_requests("a", now, 60, 10)
        failed = WebhookAttempt(request.id, now, 500, "HTTP 500", True, "a")
        self.assertFalse((yield self.store.settle_webhook_request(request.id, "b", failed,
                                                                  now + 10)))
        self.assertTrue((yield self.store.settle_webhook_request(request.id, "a", failed,
                                                                 now + 10)))
        self.assertEqual((yield self.store.claim_webhook_requests("a", now + 9, 60, 10)), [])
        [request] = yield self.store.claim_webhook_requests("b", now + 10, 60, 10)
        self.assertEqual(request.attempts, 1)
        ok = WebhookAttempt(request.id, now + 10, 204, None, False, "b")
        self.assertTrue((yield self.store.settle_webhook_request(request.id, "b", ok)))
        [(request, attempts)] = yield self.store.list_webhook_requests()
        self.assertEqual((request.status, request.attempts, request.last_error),
                         ("delivered", 2, None))
        self.assertEqual([(a.status_code, a.will_retry, a.node) for a in attempts],
                         [(500, True, "a"), (204, False, "b")])
        self.assertEqual((yield self.store.webhook_outbox_counts()), {"delivered": 1})
        [webhook] = yield self.store.list_webhooks()
        self.assertEqual(webhook.last_used_at, now + 10)
        self.assertEqual((yield self.store.prune_webhook_requests(now + 10)), 0)
        self.assertEqual((yield self.store.prune_webhook_requests(now + 11)), 1)

    @defer.inlineCallbacks
    def test_a_failed_request_is_failed(self):
        yield self.outbox(1)
        now = self.clock.seconds()
        [request] = yield self.store.claim_webhook_requests("a", now, 60, 10)
        last = WebhookAttempt(request.id, now, None, "connection refused", False, "a")
        yield self.store.settle_webhook_request(request.id, "a", last, None)
        [(request, _)] = yield self.store.list_webhook_requests()
        self.assertEqual((request.status, request.last_error),
                         ("failed", "connection refused"))
        self.assertEqual((yield self.store.claim_webhook_requests("a", now + 1e6, 60, 10)), [])

    @defer.inlineCallbacks
    def test_signing_key_is_made_once_for_every_node(self):
        other = yield make_store(self, self.store_location)
        first, second = yield defer.gatherResults([self.store.webhook_signing_key(),
                                                   other.webhook_signing_key()])
        self.assertEqual(first, second)
        self.assertTrue(first.startswith("-----BEGIN PRIVATE KEY-----"))
        self.assertEqual((yield self.store.webhook_signing_key()), first)

    @defer.inlineCallbacks
    def test_trigger_writes_for_the_servers_webhooks(self):
        yield self.store.add_webhook(("acme", "web"), URL, events=["DomainDNSError"])
        written = yield self.store.trigger_webhook(self.tenancy["web"].id, "DomainDNSError",
                                                   {"domain": "good.example"})
        self.assertEqual(written, 1)
        [(_, body)] = yield self.requests()
        self.assertEqual(body["payload"], {"domain": "good.example"})


class SQLiteWebhookStoreTests(WebhookStoreContract, unittest.TestCase):
    pass


class PostgresWebhookStoreTests(PostgresFixture, WebhookStoreContract, unittest.TestCase):
    pass
