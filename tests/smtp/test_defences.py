"""What an attacker with a valid key tried against the submission path, over
SMTP: the header section past the old 1 MiB cut, bare CR and NUL, address
literals, repeated recipients and non-UTF-8 AUTH input. Each case is refused
with a clear reply, or normalised so that the bytes the policy checked are
the bytes stored (see docs/submission.md)."""
from __future__ import annotations

import email
import email.policy
import re

from twisted.internet import defer
from twisted.logger import globalLogPublisher, formatEvent
from twisted.trial import unittest

from mailgw.auth.throttle import FailureThrottle
from tests.helpers import (
    Harness, b64, cram_answer, make_store, on_postgres, seed_tenancy, stored_messages,
)

KEY = "K" * 24
QUEUED = re.compile(rb"^250 OK: queued as [A-Z0-9]{12}$")
OWN = b"From: a@good.example\r\n"
MiB = 1024 * 1024


class DefenceTestBase(unittest.TestCase):
    settings = {"max_message_size": 8 * MiB, "max_header_size": MiB}

    @defer.inlineCallbacks
    def setUp(self):
        self.store = yield make_store(self)
        yield seed_tenancy(self.store)
        self.h = Harness(self, self.store, **self.settings)
        self.h.connect()
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)

    @defer.inlineCallbacks
    def submit(self, message: bytes, rcpts=("you@dest.example",)):
        replies = yield self.h.lines("EHLO c.example", "AUTH PLAIN " + b64(f"\0u\0{KEY}"),
                                     "MAIL FROM:<a@good.example>",
                                     *[f"RCPT TO:<{r}>" for r in rcpts], "DATA")
        self.assertEqual(replies[-1], b"354 Go ahead")
        [final] = yield self.h.send(message + b"\r\n.\r\n")
        return final

    def stored(self):
        return stored_messages(self.store)


class HeaderSectionTests(DefenceTestBase):
    @defer.inlineCallbacks
    def test_foreign_mailbox_after_a_megabyte_of_folding(self):
        message = (b"From: a@good.example" + b"\r\n " * (MiB // 3 + 1000)
                   + b", ceo@foreign.test\r\n\r\nbody")
        reply = yield self.submit(message)
        self.assertEqual(reply, b"552 Header section too large (maximum size 1024KB)")
        self.assertEqual((yield self.stored()), ([], []))
        self.assertIn("message refused: header section too large", self.logged())

    @defer.inlineCallbacks
    def test_foreign_from_after_a_megabyte_of_padding(self):
        pad = b"".join(b"X-Pad: %06d\r\n" % i for i in range(1400 * 1024 // 15))
        reply = yield self.submit(OWN + pad + b"From: ceo@foreign.test\r\n\r\nbody")
        self.assertEqual(reply, b"552 Header section too large (maximum size 1024KB)")
        self.assertEqual((yield self.stored()), ([], []))

    @defer.inlineCallbacks
    def test_large_header_section_under_the_limit_is_checked_whole(self):
        pad = b"".join(b"X-Pad: %06d\r\n" % i for i in range(900 * 1024 // 15))
        reply = yield self.submit(OWN + pad + b"From: ceo@foreign.test\r\n\r\nbody")
        self.assertEqual(reply, b"530 From/Sender name is not valid")
        reply = yield self.submit(OWN + pad + b"Subject: ok\r\n\r\nbody")
        self.assertRegex(reply, QUEUED)

    @defer.inlineCallbacks
    def test_bare_cr_in_the_header_section_is_refused(self):
        reply = yield self.submit(b"X-A: b\rFrom: ceo@foreign.test\r\r\n" + OWN + b"\r\nbody")
        self.assertEqual(reply, b"554 Header section not valid: bare CR")
        self.assertEqual((yield self.stored()), ([], []))
        self.assertIn("message refused: header section: bare CR", self.logged())

    @defer.inlineCallbacks
    def test_nul_in_a_header_name_is_refused(self):
        reply = yield self.submit(b"Fr\x00om: ceo@foreign.test\r\n" + OWN + b"\r\nbody")
        self.assertEqual(reply, b"554 Header section not valid: NUL byte")

    @defer.inlineCallbacks
    def test_eight_bit_header_name_and_junk_lines_are_refused(self):
        reply = yield self.submit(b"Fr\xc3\xb6m: x\r\n" + OWN + b"\r\nbody")
        self.assertEqual(reply, b"554 Header section not valid: invalid header field name")
        reply = yield self.submit(OWN + b"junk\r\nFrom: ceo@foreign.test\r\n\r\nbody")
        self.assertEqual(reply, b"554 Header section not valid: line that is not a header field")
        reply = yield self.submit(OWN + b" \r\nFrom: ceo@foreign.test\r\n\r\nbody")
        self.assertEqual(reply, b"554 Header section not valid: "
                                b"continuation line of white space only")
        self.assertEqual((yield self.stored()), ([], []))

    @defer.inlineCallbacks
    def test_session_goes_on_after_a_refusal(self):
        yield self.submit(b"X-A: b\rc\r\n" + OWN + b"\r\nbody")
        reply = yield self.submit(OWN + b"\r\nbody")
        self.assertRegex(reply, QUEUED)


class BodyTests(DefenceTestBase):
    @defer.inlineCallbacks
    def test_bare_cr_and_lf_in_the_body_are_stored_as_crlf(self):
        body = b"a\r.\rMAIL FROM:<x@y>\rb\n.\nc"
        reply = yield self.submit(OWN + b"\r\n" + body)
        self.assertRegex(reply, QUEUED)
        _, [stored] = yield self.stored()
        self.assertTrue(stored.endswith(
            b"\r\n\r\na\r\n.\r\nMAIL FROM:<x@y>\r\nb\r\n.\r\nc\r\n"), stored)
        self.assertEqual(stored.count(b"\r"), stored.count(b"\r\n"))
        self.assertEqual(stored.count(b"\n"), stored.count(b"\r\n"))

    @defer.inlineCallbacks
    def test_nul_in_the_body_is_refused(self):
        reply = yield self.submit(OWN + b"\r\nbinary \x00 here")
        self.assertEqual(reply, b"554 Message body contains a NUL byte")
        self.assertEqual((yield self.stored()), ([], []))

    @defer.inlineCallbacks
    def test_stored_bytes_parse_the_same_for_pythons_email(self):
        reply = yield self.submit(OWN + b"Subject: x\n\nline\rline")
        self.assertRegex(reply, QUEUED)
        _, [stored] = yield self.stored()
        for policy in (email.policy.compat32, email.policy.default):
            parsed = email.message_from_bytes(stored, policy=policy)
            self.assertEqual(parsed.get_all("From"), ["a@good.example"])
            self.assertEqual(parsed.get_payload(), "line\r\nline\r\n")


class RecipientTests(DefenceTestBase):
    @defer.inlineCallbacks
    def test_address_literals_are_refused(self):
        replies = yield self.h.lines(
            "EHLO c.example", "AUTH PLAIN " + b64(f"\0u\0{KEY}"), "MAIL FROM:<a@good.example>",
            "RCPT TO:<postmaster@[127.0.0.1]>", "RCPT TO:<x@[IPv6:::1]>")
        self.assertEqual(replies[-2:], [b"553 Address literals are not accepted"] * 2)
        self.assertIn("recipient refused: address literal postmaster@[127.0.0.1]",
                      self.logged())

    @defer.inlineCallbacks
    def test_repeated_recipients_are_one(self):
        reply = yield self.submit(OWN + b"\r\nbody", rcpts=(
            "you@dest.example", "you@dest.example", "you@DEST.example", "You@dest.example"))
        self.assertRegex(reply, QUEUED)
        entries, _ = yield self.stored()
        self.assertEqual(sorted(e.rcpt_to for e in entries),
                         ["You@dest.example", "you@dest.example"])

    @defer.inlineCallbacks
    def test_repeats_do_not_count_towards_the_limit(self):
        h = Harness(self, self.store, max_recipients=2)
        h.connect()
        replies = yield h.lines("EHLO c", "AUTH PLAIN " + b64(f"\0u\0{KEY}"), "MAIL FROM:<>",
                                "RCPT TO:<a@d.example>", "RCPT TO:<a@d.example>",
                                "RCPT TO:<b@d.example>", "RCPT TO:<c@d.example>")
        self.assertEqual(replies[-4:], [b"250 OK", b"250 OK", b"250 OK",
                                        b"452 Too many recipients"])


class AddressLiteralsAllowedTests(DefenceTestBase):
    settings = dict(DefenceTestBase.settings, allow_address_literals=True)

    @defer.inlineCallbacks
    def test_accepted_when_configured(self):
        reply = yield self.submit(OWN + b"\r\nbody", rcpts=("postmaster@[192.0.2.1]",))
        self.assertRegex(reply, QUEUED)


class NonUTF8AuthTests(DefenceTestBase):
    def setUp(self):
        d = super().setUp()

        def throttle(_):
            self.h.guard.throttle = FailureThrottle(self.h.clock, max_failures=3)
        return d.addCallback(throttle)

    @defer.inlineCallbacks
    def test_plain_login_and_cram_md5(self):
        challenge = (yield self.h.lines("EHLO c", "AUTH CRAM-MD5"))[-1]
        bad_user = b64(b"acme/w\xffb " + cram_answer("x", KEY, challenge).encode())
        replies = yield self.h.lines(bad_user, "AUTH PLAIN " + b64(b"\0u\0K\xff\xfe"))
        self.assertEqual(replies, [b"535 Denied", b"501 Malformed AUTH PLAIN response"])
        replies = yield self.h.lines("AUTH LOGIN", b64("user"), b64(b"\xc3\x28"))
        self.assertEqual(replies[-1][:3], b"421")  # the third failure locks out
        text = self.logged()
        self.assertEqual(text.count("Authentication failure for 192.0.2.7"), 3)
        self.assertNotIn("Traceback", text)
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_pipelined_burst_never_answers_451(self):
        self.h.guard.throttle = None
        burst = "".join("AUTH PLAIN " + b64(b"\0u\0" + bytes([0x80 + i % 64]) * 3) + "\r\n"
                        for i in range(300))
        yield self.h.lines("EHLO c")
        replies = yield self.h.send(burst)
        self.assertEqual(set(replies), {b"501 Malformed AUTH PLAIN response"})
        self.assertEqual(len(replies), 300)


PostgresHeaderSectionTests = on_postgres(HeaderSectionTests)
PostgresBodyTests = on_postgres(BodyTests)
