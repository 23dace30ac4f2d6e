"""AUTH failure throttling (docs/smtp.md §4, [auth_throttle]): per address, within a
window, a lock-out that also refuses new connections, and 530 at RCPT
counting as a failure."""
from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from mailgw.auth.throttle import FailureThrottle
from tests.helpers import HOSTNAME, Harness, b64, make_store, seed_tenancy

LOCKED = f"421 {HOSTNAME} Too many authentication failures, try again later".encode()


class FailureThrottleTests(unittest.TestCase):
    def setUp(self):
        from twisted.internet.task import Clock
        self.clock = Clock()
        self.throttle = FailureThrottle(self.clock, max_failures=3, window=60, lockout=100,
                                        exempt=["10.0.0.0/8"])

    def test_locks_after_max_failures_within_window(self):
        self.assertEqual([self.throttle.record_failure("192.0.2.1") for _ in range(3)],
                         [False, False, True])
        self.assertTrue(self.throttle.locked("192.0.2.1"))
        self.assertTrue(self.throttle.locked("::ffff:192.0.2.1"))
        self.assertFalse(self.throttle.locked("192.0.2.2"))
        self.clock.advance(99)
        self.assertTrue(self.throttle.locked("192.0.2.1"))
        self.clock.advance(1)
        self.assertFalse(self.throttle.locked("192.0.2.1"))

    def test_failures_outside_window_do_not_add_up(self):
        for _ in range(2):
            self.throttle.record_failure("192.0.2.1")
        self.clock.advance(61)
        self.assertFalse(self.throttle.record_failure("192.0.2.1"))
        self.assertFalse(self.throttle.locked("192.0.2.1"))

    def test_exempt_networks(self):
        for _ in range(10):
            self.assertFalse(self.throttle.record_failure("10.1.1.1"))
        self.assertFalse(self.throttle.locked("10.1.1.1"))

    def test_memory_is_bounded(self):
        from mailgw.auth import throttle as module
        for i in range(module.SWEEP_AT + 50):
            self.throttle.record_failure(f"2001:db8::{i:x}")
            if i == module.SWEEP_AT // 2:
                self.clock.advance(61)
        self.assertLessEqual(len(self.throttle._failures), module.SWEEP_AT)


class ProtocolThrottleTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.store = yield make_store(self)
        yield seed_tenancy(self.store)
        self.h = Harness(self, self.store)
        self.h.guard.throttle = FailureThrottle(self.h.clock, max_failures=3, window=600,
                                                  lockout=900)
        self.h.connect()

    @defer.inlineCallbacks
    def test_third_failure_locks_out_and_new_connections_are_refused(self):
        bad = "AUTH PLAIN " + b64("\0u\0" + "Z" * 24)
        replies = yield self.h.lines(bad, bad)
        self.assertEqual(replies, [b"535 Invalid credential"] * 2)
        self.assertEqual((yield self.h.lines(bad)), [LOCKED])
        self.assertTrue(self.h.transport.disconnecting)
        other = Harness(self, self.store)
        other.factory = self.h.factory
        self.assertEqual(other.connect(), [LOCKED])
        self.h.clock.advance(900)
        third = Harness(self, self.store)
        third.factory = self.h.factory
        self.assertTrue(third.connect()[0].startswith(b"220 "))

    @defer.inlineCallbacks
    def test_unauthenticated_rcpt_counts(self):
        yield self.h.lines("EHLO c", "MAIL FROM:<a@b.example>")
        replies = yield self.h.lines("RCPT TO:<x@y.example>", "RCPT TO:<x@y.example>",
                                     "RCPT TO:<x@y.example>")
        self.assertEqual(replies, [b"530 Authentication required"] * 2 + [LOCKED])

    @defer.inlineCallbacks
    def test_mixed_mechanisms_count_together(self):
        replies = yield self.h.lines("AUTH PLAIN " + b64("nonuls"), "AUTH LOGIN", b64("u"),
                                     b64("wrong"), "AUTH CRAM-MD5", b64("acme/web 00"))
        self.assertEqual(replies[0], b"501 Malformed AUTH PLAIN response")
        self.assertEqual(replies[-1], LOCKED)
