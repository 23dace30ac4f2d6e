"""Deadlines, not idle timers (docs/smtp.md §2 and §9): a command line must be
whole within idle_timeout of its first byte, DATA within data_timeout plus its
bytes at min_data_rate, a session within max_session_time; an over-long line
inside an AUTH exchange ends the exchange. All with a Clock."""
from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import HOSTNAME, Harness, b64, make_store, seed_tenancy

KEY = "K" * 24
TIMEOUT = f"421 {HOSTNAME} Timeout, closing connection".encode()


class DeadlineTestBase(unittest.TestCase):
    settings = {"idle_timeout": 300.0, "data_timeout": 300.0, "min_data_rate": 1024}

    @defer.inlineCallbacks
    def setUp(self):
        self.store = yield make_store(self)
        yield seed_tenancy(self.store)
        self.h = Harness(self, self.store, **self.settings)
        self.h.connect()

    def closed(self) -> bool:
        return self.h.transport.disconnecting

    @defer.inlineCallbacks
    def in_data(self):
        replies = yield self.h.lines("EHLO c", "AUTH PLAIN " + b64(f"\0u\0{KEY}"),
                                     "MAIL FROM:<a@good.example>", "RCPT TO:<b@dest.example>",
                                     "DATA")
        self.assertEqual(replies[-1], b"354 Go ahead")


class CommandDeadlineTests(DeadlineTestBase):
    def test_idle_before_a_command(self):
        self.h.clock.advance(299.9)
        self.assertFalse(self.closed())
        self.h.clock.advance(0.2)
        self.assertEqual(self.h.take(), [TIMEOUT])
        self.assertTrue(self.closed())

    @defer.inlineCallbacks
    def test_a_byte_at_a_time_does_not_hold_the_session(self):
        # A slowloris client: one byte a second, never a line end.
        for _ in range(299):
            yield self.h.send(b"N")
            self.h.clock.advance(1)
        self.assertFalse(self.closed())
        yield self.h.send(b"O")
        self.h.clock.advance(1.1)
        self.assertEqual(self.h.take(), [TIMEOUT])

    @defer.inlineCallbacks
    def test_each_complete_line_gets_its_own_deadline(self):
        for _ in range(3):
            self.h.clock.advance(200)
            self.assertEqual((yield self.h.send(b"NOOP\r\n")), [b"250 OK"])
        self.h.clock.advance(200)
        yield self.h.send(b"NO")
        self.h.clock.advance(99)
        self.assertEqual((yield self.h.send(b"OP\r\n")), [b"250 OK"])
        self.assertFalse(self.closed())

    @defer.inlineCallbacks
    def test_partial_line_keeps_its_first_bytes_deadline(self):
        yield self.h.send(b"NOOP\r\nNO")  # a whole line, then the start of the next
        self.h.clock.advance(250)
        yield self.h.send(b"O")
        self.h.clock.advance(50.1)
        self.assertEqual(self.h.take(), [TIMEOUT])


class DataDeadlineTests(DeadlineTestBase):
    @defer.inlineCallbacks
    def test_trickled_data_is_cut_at_the_minimum_rate(self):
        yield self.in_data()
        # One byte every 2 s: far below 1024 bytes/s.
        sent = 0
        while not self.closed() and sent < 1000:
            yield self.h.send(b"x")
            sent += 1
            self.h.clock.advance(2)
        self.assertTrue(self.closed())
        self.assertLess(sent, 152)  # 300 s + 151 bytes / 1024 B/s < 302 s
        self.assertEqual(self.h.take()[-1], TIMEOUT)
        self.assertEqual((yield self.store.list_entries()), [])

    @defer.inlineCallbacks
    def test_a_fast_big_body_gets_time_for_its_size(self):
        yield self.in_data()
        chunk = b"From: a@good.example\r\n\r\n" + b"y" * 1022 + b"\r\n"
        yield self.h.send(chunk)
        for _ in range(400):  # 400 kB arriving over 400 s: above the rate
            yield self.h.send(b"z" * 1022 + b"\r\n")
            self.h.clock.advance(1)
        self.assertFalse(self.closed())
        replies = yield self.h.send(b".\r\n")
        self.assertRegex(replies[0], rb"^250 OK: queued as ")

    @defer.inlineCallbacks
    def test_command_deadline_again_after_the_message(self):
        yield self.in_data()
        yield self.h.send(b"From: a@good.example\r\n\r\nhi\r\n.\r\n")
        self.h.clock.advance(299)
        self.assertFalse(self.closed())
        self.h.clock.advance(1.1)
        self.assertEqual(self.h.take(), [TIMEOUT])


class NoRateTests(DeadlineTestBase):
    settings = dict(DeadlineTestBase.settings, min_data_rate=0)

    @defer.inlineCallbacks
    def test_without_a_rate_data_timeout_runs_between_chunks(self):
        yield self.in_data()
        for _ in range(5):
            self.h.clock.advance(299)
            yield self.h.send(b"x\r\n")
        self.assertFalse(self.closed())
        self.h.clock.advance(300.1)
        self.assertEqual(self.h.take(), [TIMEOUT])


class SessionTimeTests(DeadlineTestBase):
    settings = dict(DeadlineTestBase.settings, max_session_time=600.0)

    @defer.inlineCallbacks
    def test_a_busy_session_still_ends(self):
        for _ in range(5):
            self.h.clock.advance(119)
            self.assertEqual((yield self.h.send(b"NOOP\r\n")), [b"250 OK"])
        self.h.clock.advance(5.1)
        self.assertEqual(self.h.take(), [TIMEOUT])
        self.assertTrue(self.closed())


class AuthLineTooLongTests(DeadlineTestBase):
    @defer.inlineCallbacks
    def test_over_long_answer_ends_the_exchange(self):
        replies = yield self.h.lines("EHLO c", "AUTH LOGIN")
        self.assertEqual(replies[-1], b"334 VXNlcm5hbWU6")
        replies = yield self.h.send(b"A" * 5000 + b"\r\nNOOP\r\nAUTH PLAIN "
                                    + b64(f"\0u\0{KEY}").encode() + b"\r\n")
        self.assertEqual(replies, [b"501 Line too long, authentication cancelled", b"250 OK",
                                   b"235 Granted for acme/web"])

    @defer.inlineCallbacks
    def test_over_long_answer_split_over_reads(self):
        yield self.h.lines("EHLO c", "AUTH PLAIN")
        yield self.h.send(b"B" * 3000)
        replies = yield self.h.send(b"B" * 3000 + b"\r\nNOOP\r\n")
        self.assertEqual(replies, [b"501 Line too long, authentication cancelled", b"250 OK"])
