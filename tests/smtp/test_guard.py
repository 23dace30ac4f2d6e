"""The failure throttle's semantics over SMTP (docs/operations.md): failed
AUTH attempts that a successful AUTH follows in the same connection do not
count; counted failures name the mechanism and the user given; attempts
without any key have their own budget, which never locks out working keys."""
from __future__ import annotations

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from mailgw.auth.guard import loggable_user
from mailgw.auth.throttle import FailureThrottle
from tests.helpers import HOSTNAME, Harness, b64, cram_answer, make_store, seed_tenancy

KEY = "K" * 24
LOCKED = f"421 {HOSTNAME} Too many authentication failures, try again later".encode()


class GuardTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.store = yield make_store(self)
        yield seed_tenancy(self.store)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.first = None

    def connect(self, client_ip="192.0.2.7"):
        h = Harness(self, self.store, client_ip=client_ip)
        if self.first is None:
            self.first = h
            h.guard.throttle = FailureThrottle(h.clock, max_failures=3)
            h.guard.anonymous = FailureThrottle(h.clock, max_failures=3)
        else:  # every connection shares the first one's guard, as listeners do
            h.factory, h.guard, h.store = self.first.factory, self.first.guard, self.first.store
        greeting = h.connect()
        return h, greeting

    def failure_lines(self):
        return [formatEvent(e) for e in self.events
                if "Authentication failure for" in formatEvent(e)]

    @defer.inlineCallbacks
    def smtplib_style_login(self, h):
        """What Python's smtplib.login("any", KEY) does: CRAM-MD5 first, then PLAIN."""
        challenge = (yield h.lines("EHLO app", "AUTH CRAM-MD5"))[-1]
        replies = yield h.lines(cram_answer("any", KEY, challenge),
                                "AUTH PLAIN " + b64(f"\0any\0{KEY}"))
        return replies

    @defer.inlineCallbacks
    def test_fallback_logins_never_lock_out(self):
        for _ in range(25):
            h, greeting = self.connect()
            self.assertTrue(greeting[0].startswith(b"220 "), greeting)
            replies = yield self.smtplib_style_login(h)
            self.assertEqual(replies, [b"535 Denied", b"235 Granted for acme/web"])
            yield h.lines("QUIT")
            h.protocol.connectionLost(None)
        self.assertEqual(self.failure_lines(), [])
        self.assertFalse(self.first.guard.locked("192.0.2.7"))
        forgiven = [formatEvent(e) for e in self.events if "not counted" in formatEvent(e)]
        self.assertTrue(any("1 failed attempt(s) before this authentication" in t
                            for t in forgiven))

    @defer.inlineCallbacks
    def test_failures_count_when_the_connection_ends_without_success(self):
        h, _ = self.connect()
        replies = yield h.lines("EHLO c", "AUTH PLAIN " + b64("\0bob\0" + "Z" * 24),
                                "AUTH LOGIN", b64("carol"), b64("W" * 24))
        self.assertEqual([replies[-4], replies[-1]], [b"535 Invalid credential"] * 2)
        self.assertEqual(self.failure_lines(), [])
        h.protocol.connectionLost(None)
        trace = h.protocol.session.trace_id
        self.assertEqual(self.failure_lines(), [
            f'[{trace}] Authentication failure for 192.0.2.7 (PLAIN, user "bob")',
            f'[{trace}] Authentication failure for 192.0.2.7 (LOGIN, user "carol")'])
        for line in self.failure_lines():
            self.assertNotIn("Z" * 24, line)
            self.assertNotIn("W" * 24, line)

    @defer.inlineCallbacks
    def test_brute_force_in_one_connection_counts_at_once(self):
        h, _ = self.connect()
        bad = "AUTH PLAIN " + b64("\0u\0" + "Z" * 24)
        replies = yield h.lines("EHLO c", bad, bad, bad)
        self.assertEqual(replies[-3:], [b"535 Invalid credential"] * 2 + [LOCKED])
        self.assertEqual(len(self.failure_lines()), 3)
        _, greeting = self.connect()
        self.assertEqual(greeting, [LOCKED])

    @defer.inlineCallbacks
    def test_keyless_rcpt_has_its_own_budget(self):
        h, _ = self.connect()
        replies = yield h.lines("EHLO c", "MAIL FROM:<a@b.example>", *["RCPT TO:<x@y.example>"] * 3)
        self.assertEqual(replies[-3:], [b"530 Authentication required"] * 2 + [LOCKED])
        self.assertEqual(self.failure_lines(), [], "fail2ban sees nothing of it")
        # A working key from the same address still gets in.
        h2, greeting = self.connect()
        self.assertTrue(greeting[0].startswith(b"220 "))
        replies = yield h2.lines("EHLO c", "AUTH PLAIN " + b64(f"\0u\0{KEY}"),
                                 "MAIL FROM:<a@good.example>", "RCPT TO:<x@y.example>")
        self.assertEqual(replies[-3:], [b"235 Granted for acme/web", b"250 OK", b"250 OK"])
        # ...but a keyless RCPT from it is refused at once.
        h3, _ = self.connect()
        replies = yield h3.lines("EHLO c", "MAIL FROM:<a@b.example>", "RCPT TO:<x@y.example>")
        self.assertEqual(replies[-1], LOCKED)

    def test_user_names_are_made_safe_for_one_line(self):
        self.assertEqual(loggable_user(None), "-")
        self.assertEqual(loggable_user('a"b\r\nForged: line'), "\"a'b??Forged: line\"")
        self.assertEqual(loggable_user("u" * 100), '"' + "u" * 64 + '..."')
