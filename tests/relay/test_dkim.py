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
from twisted.trial import unittest

from mailgw.config import RelayConfig
from mailgw.domains.dkim import dns_value, generate_key
from mailgw.model import MessageEnvelope, generate_token
from mailgw.relay import signing
from mailgw.relay.service import RelayService
from mailgw.store.base import CHUNK_SIZE, Q
from tests.relay.fixtures import BODY, PostgresFixture, StoreFixture
from tests.relay.sink import Sink, text_body

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
        [message] = self.sink.messages
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

    # -- unsigned ----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_domain_not_in_the_store_is_sent_unsigned(self):
        message = yield self.deliver(sender_domain="elsewhere.example")
        self.assertEqual((message.dkim_signature, message.data), (b"", BODY))

    @defer.inlineCallbacks
    def test_no_sender_domain_is_sent_unsigned(self):
        message = yield self.deliver(sender_domain=None)
        self.assertEqual((message.dkim_signature, message.data), (b"", BODY))

    @defer.inlineCallbacks
    def test_domain_without_a_key_is_sent_unsigned(self):
        yield self.change_keys("DELETE FROM dkim_keys")
        message = yield self.deliver()
        self.assertEqual((message.dkim_signature, message.data), (b"", BODY))

    @defer.inlineCallbacks
    def test_only_retiring_keys_is_sent_unsigned(self):
        yield self.change_keys("UPDATE dkim_keys SET retiring = ?", (True,))
        message = yield self.deliver()
        self.assertEqual((message.dkim_signature, message.data), (b"", BODY))

    @defer.inlineCallbacks
    def test_bad_key_is_sent_unsigned_and_logged(self):
        yield self.change_keys("UPDATE dkim_keys SET private_key = ?",
                               ("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n"
                                "-----END PRIVATE KEY-----\n",))
        events = []
        from twisted.logger import globalLogPublisher
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        message = yield self.deliver()
        self.assertEqual((message.dkim_signature, message.data), (b"", BODY))
        errors = [e for e in events if "DKIM signing" in e.get("log_format", "")]
        self.assertEqual([e["log_level"].name for e in errors], ["error"])
        self.assertNotIn("PRIVATE KEY", repr(errors))

    @defer.inlineCallbacks
    def test_ed25519_key_is_sent_unsigned(self):
        yield self.change_keys("UPDATE dkim_keys SET algorithm = ?, private_key = ?",
                               ("ed25519", generate_key("ed25519")))
        message = yield self.deliver()
        self.assertEqual((message.dkim_signature, message.data), (b"", BODY))


class SQLiteDKIMTests(DKIMContract, unittest.TestCase):
    """On SQLite."""


class PostgreSQLDKIMTests(PostgresFixture, DKIMContract, unittest.TestCase):
    """On PostgreSQL."""
