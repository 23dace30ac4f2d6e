"""DKIM signing at send (RFC 6376): real deliveries through the relay to the
sink, whose signatures are checked with dkimpy against the domain's key
record (from L{mailgw.domains.dkim.dns_value}, served by a function, never
real DNS).

It runs on SQLite, and again on PostgreSQL when the test run has one.
"""
from __future__ import annotations

import io
import random
import threading

import dkim
from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from mailgw.config import RelayConfig
from mailgw.domains.dkim import dns_value
from mailgw.model import MessageEnvelope, generate_token
from mailgw.relay import signing
from mailgw.relay.service import RelayService
from mailgw.store.base import CHUNK_SIZE, Q
from tests.relay.fixtures import BODY, PostgresFixture, StoreFixture
from tests.relay.sink import Sink, split_signature, text_body

DOMAIN = "good.example"


def _set_keys(sql, params):
    yield Q(sql, params)


def tags(signature: bytes) -> dict:
    """The tags of a DKIM-Signature field, whitespace removed."""
    value = b"".join(signature.split(b":", 1)[1].split())
    return dict(t.split(b"=", 1) for t in value.split(b";") if t)


def large_body() -> bytes:
    """A message of a store piece and some more, whose line at the end of
    the first piece is a lone dot and whose next piece starts with a dot."""
    head = b"From: App <app@good.example>\r\nTo: to@dest.test\r\nSubject: large\r\n\r\n"
    line = b"x" * 78 + b"\r\n"
    lines = (CHUNK_SIZE - len(head)) // len(line) - 1
    fill = head + line * lines
    last = CHUNK_SIZE - len(fill) - 5  # then ".\r\n" ends the piece exactly
    fill += b"y" * last + b"\r\n.\r\n"
    assert len(fill) == CHUNK_SIZE
    return fill + b".starts the second piece\r\n" + text_body(200_000, seed=7)


class DKIMContract(StoreFixture):
    """Signing end to end over loopback, on every engine."""

    @defer.inlineCallbacks
    def setUp(self):
        yield StoreFixture.setUp(self)
        self.sink = Sink()
        self.port = self.sink.listen(self)

    def relay(self):
        config = RelayConfig(smarthost=f"127.0.0.1:{self.port}", tls="none", retry_base=60.0,
                             retry_max=600.0, max_queue_age=3600.0, lease=300.0,
                             poll_interval=5.0, concurrency=4)
        return RelayService(self.store, config, reactor, "node-a", "relay.mailgw.test",
                            clock=self.clock, rand=random.Random(1), stop_grace=10.0)

    def enqueue(self, body=BODY, sender_domain=DOMAIN):
        envelope = MessageEnvelope(
            token=generate_token(12), server_id=self.tenancy["web"].id, credential_id=None,
            mail_from="app@good.example", rcpt_to=("to@dest.test",),
            sender_domain=sender_domain, protocol="smtp", status="queued", hold_reason=None)
        return self.store.enqueue(envelope, io.BytesIO(body))

    @defer.inlineCallbacks
    def deliver(self, body=BODY, sender_domain=DOMAIN):
        yield self.enqueue(body, sender_domain)
        yield self.relay().run_once()
        message = self.sink.messages[-1]
        self.assertTrue(message.accepted)
        return message

    @defer.inlineCallbacks
    def records(self):
        """C{dnsfunc} for dkimpy: the TXT records of the domain's keys."""
        keys = yield self.store.dkim_keys(DOMAIN)
        published = {f"{k.selector}._domainkey.{DOMAIN}": dns_value(k.private_key)
                     for k in keys}
        asked = []

        def dnsfunc(name, timeout=5):
            name = name.decode("ascii") if isinstance(name, bytes) else name
            asked.append(name.rstrip("."))
            return published.get(name.rstrip("."), "").encode("ascii")
        return dnsfunc, keys, asked

    def change_keys(self, sql, params=()):
        return self.store._run(_set_keys, sql, params)

    # -- signed ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_signed_message_verifies_and_keeps_the_stored_bytes(self):
        message = yield self.deliver()
        dnsfunc, keys, asked = yield self.records()
        self.assertTrue(message.dkim_signature.startswith(b"DKIM-Signature:"))
        self.assertEqual(message.data, BODY)  # exactly the stored bytes after it
        self.assertTrue(dkim.verify(message.message, dnsfunc=dnsfunc))
        self.assertEqual(asked, [f"{keys[0].selector}._domainkey.{DOMAIN}"])
        t = tags(message.dkim_signature)
        self.assertEqual((t[b"d"], t[b"s"], t[b"a"], t[b"c"]),
                         (DOMAIN.encode(), keys[0].selector.encode(), b"rsa-sha256",
                          b"relaxed/relaxed"))
        # no identity of our own: the default, "@" and d= (RFC 6376 section 3.5)
        self.assertEqual(t.get(b"i", b"@" + DOMAIN.encode()), b"@" + DOMAIN.encode())
        signed = t[b"h"].lower().split(b":")
        self.assertTrue({b"from", b"to", b"subject"} <= set(signed))
        self.assertNotIn(b"received", signed)

    @defer.inlineCallbacks
    def test_a_changed_message_does_not_verify(self):
        message = yield self.deliver()
        dnsfunc, _, _ = yield self.records()
        tampered = message.message.replace(b"Hello.", b"Hullo.")
        self.assertFalse(dkim.verify(tampered, dnsfunc=dnsfunc))

    @defer.inlineCallbacks
    def test_large_body_with_dot_lines_at_piece_boundaries_verifies(self):
        body = large_body()
        message = yield self.deliver(body)
        dnsfunc, _, _ = yield self.records()
        self.assertEqual(message.data, body)
        self.assertIn(b"\r\n..\r\n", message.wire)  # the DotStuffer saw the lone dot
        self.assertTrue(dkim.verify(message.message, dnsfunc=dnsfunc))

    @defer.inlineCallbacks
    def test_rotated_domain_signs_with_the_new_selector(self):
        [old] = yield self.store.dkim_keys(DOMAIN)
        new = yield self.store.rotate_dkim(DOMAIN)
        message = yield self.deliver()
        dnsfunc, _, asked = yield self.records()
        self.assertEqual(tags(message.dkim_signature)[b"s"], new.selector.encode())
        self.assertNotEqual(new.selector, old.selector)
        self.assertTrue(dkim.verify(message.message, dnsfunc=dnsfunc))
        self.assertEqual(asked, [f"{new.selector}._domainkey.{DOMAIN}"])

    @defer.inlineCallbacks
    def test_rotation_overlap_then_finish(self):
        before = yield self.deliver()
        yield self.store.rotate_dkim(DOMAIN)
        yield self.deliver()
        after = self.sink.messages[-1]
        dnsfunc, _, _ = yield self.records()  # the old key still published, retiring
        self.assertTrue(dkim.verify(before.message, dnsfunc=dnsfunc))
        self.assertTrue(dkim.verify(after.message, dnsfunc=dnsfunc))
        yield self.store.finish_dkim_rotation(DOMAIN)
        dnsfunc, _, _ = yield self.records()  # only the new one
        self.assertFalse(dkim.verify(before.message, dnsfunc=dnsfunc))
        self.assertTrue(dkim.verify(after.message, dnsfunc=dnsfunc))

    @defer.inlineCallbacks
    def test_signing_runs_off_the_reactor_thread(self):
        threads = []
        sign = signing.sign_message

        def recording(*args):
            threads.append(threading.get_ident())
            return sign(*args)
        self.patch(signing, "sign_message", recording)
        message = yield self.deliver()
        self.assertEqual(len(threads), 1)
        self.assertNotEqual(threads[0], threading.get_ident())
        self.assertTrue(message.dkim_signature)

    @defer.inlineCallbacks
    def test_headers_present_are_signed_and_from_over_signed(self):
        body = (b"From: App <app@good.example>\r\nTo: a@dest.test\r\nTo: b@dest.test\r\n"
                b"In-Reply-To: <x@y>\r\nList-Unsubscribe: <mailto:u@good.example>\r\n"
                b"X-Other: not signed\r\nSubject: s\r\n\r\nbody\r\n")
        message = yield self.deliver(body)
        dnsfunc, _, _ = yield self.records()
        signed = tags(message.dkim_signature)[b"h"].lower().split(b":")
        self.assertEqual(sorted(signed), sorted([b"from", b"from", b"to", b"to", b"in-reply-to",
                                                 b"list-unsubscribe", b"subject"]))
        self.assertTrue(dkim.verify(message.message, dnsfunc=dnsfunc))
        # a second From added on the way breaks it (over-signing, RFC 6376 8.15)
        self.assertFalse(dkim.verify(b"From: evil@bad.test\r\n" + message.message,
                                     dnsfunc=dnsfunc))

    @defer.inlineCallbacks
    def test_ed25519_key_adds_a_second_signature(self):
        ed = yield self.store.rotate_dkim(DOMAIN, "ed25519")
        [rsa_key] = [k for k in (yield self.store.dkim_keys(DOMAIN)) if k.algorithm == "rsa"]
        self.assertFalse(rsa_key.retiring)  # a rotation of one algorithm keeps the other
        message = yield self.deliver()
        dnsfunc, _, asked = yield self.records()
        fields, rest = split_signature(message.message)
        first, second = [b"DKIM-Signature:" + f for f in fields.split(b"DKIM-Signature:")[1:]]
        self.assertEqual(tags(first)[b"a"], b"rsa-sha256")  # RSA first: every verifier knows it
        self.assertEqual((tags(second)[b"a"], tags(second)[b"s"]),
                         (b"ed25519-sha256", ed.selector.encode()))
        self.assertEqual(rest, BODY)
        # dkimpy verifies the signature at the index it is given (0 = the top one)
        self.assertTrue(dkim.verify(message.message, dnsfunc=dnsfunc))
        d = dkim.DKIM(message.message)
        self.assertTrue(d.verify(idx=1, dnsfunc=dnsfunc))
        self.assertIn(f"{ed.selector}._domainkey.{DOMAIN}", asked)

    @defer.inlineCallbacks
    def test_a_name_other_tenants_also_have_signs_with_this_servers_key(self):
        yield self.store.add_organization("other", "Other")
        yield self.store.add_domain(DOMAIN, organization="other")
        [own] = yield self.store.signing_keys(self.tenancy["web"].id, DOMAIN)
        message = yield self.deliver()
        self.assertEqual(tags(message.dkim_signature)[b"s"], own.selector.encode())

    # -- held, never sent unsigned -------------------------------------------------------

    @defer.inlineCallbacks
    def held(self, sender_domain=DOMAIN):
        """Deliver with no signature possible: the entry is held, nothing sent."""
        [entry_id] = (yield self.enqueue(BODY, sender_domain)).values()
        yield self.relay().run_once()
        self.assertEqual(self.sink.messages, [])
        entry = yield self.store.get_entry(entry_id)
        self.assertEqual(entry.status, "held")
        [attempt] = yield self.store.get_attempts(entry_id)
        self.assertEqual(attempt.text, "held: " + entry.hold_reason)
        return entry

    @defer.inlineCallbacks
    def test_no_sender_domain_is_sent_unsigned(self):
        # a bounce this gateway wrote has no tenant domain
        message = yield self.deliver(sender_domain=None)
        self.assertEqual((message.dkim_signature, message.data), (b"", BODY))

    @defer.inlineCallbacks
    def test_domain_no_longer_the_servers_is_held(self):
        entry = yield self.held(sender_domain="elsewhere.example")
        self.assertEqual(entry.hold_reason,
                         "DKIM: domain elsewhere.example no longer belongs to server acme/web")

    @defer.inlineCallbacks
    def test_domain_without_a_key_is_held(self):
        yield self.change_keys("DELETE FROM dkim_keys")
        entry = yield self.held()
        self.assertEqual(entry.hold_reason, "DKIM: domain good.example has no active RSA key "
                                            "(mailgw domain rotate-dkim good.example)")

    @defer.inlineCallbacks
    def test_only_retiring_keys_is_held(self):
        yield self.change_keys("UPDATE dkim_keys SET retiring = ?", (True,))
        yield self.held()

    @defer.inlineCallbacks
    def test_bad_key_is_held_logged_and_sent_once_fixed(self):
        yield self.change_keys("UPDATE dkim_keys SET private_key = ?",
                               ("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n"
                                "-----END PRIVATE KEY-----\n",))
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        entry = yield self.held()
        self.assertTrue(entry.hold_reason.startswith("DKIM signing for good.example failed: "),
                        entry.hold_reason)
        errors = [e for e in events if "held" in e.get("log_format", "")]
        self.assertEqual([e["log_level"].name for e in errors], ["error"])
        logged = " ".join(formatEvent(e) for e in events)
        self.assertNotIn("PRIVATE KEY", logged)
        self.assertNotIn("bm90IGEga2V5", logged + entry.hold_reason)
        # the operator replaces the key and releases: it goes, signed
        yield self.store.rotate_dkim(DOMAIN)
        yield self.store.finish_dkim_rotation(DOMAIN)
        yield self.store.release_entry(entry.id)
        yield self.relay().run_once()
        [message] = self.sink.messages
        dnsfunc, _, _ = yield self.records()
        self.assertTrue(dkim.verify(message.message, dnsfunc=dnsfunc))

    @defer.inlineCallbacks
    def test_a_held_message_does_not_stop_the_next_on_the_same_connection(self):
        yield self.change_keys("DELETE FROM dkim_keys")
        yield self.enqueue(BODY)
        yield self.enqueue(BODY, sender_domain=None)
        yield self.relay().run_once()
        [message] = self.sink.messages
        self.assertEqual(message.data, BODY)
        counts = yield self.store.queue_counts()
        self.assertEqual((counts.get("held"), counts.get("sent")), (1, 1))


class SQLiteDKIMTests(DKIMContract, unittest.TestCase):
    """On SQLite."""


class PostgreSQLDKIMTests(PostgresFixture, DKIMContract, unittest.TestCase):
    """On PostgreSQL."""
