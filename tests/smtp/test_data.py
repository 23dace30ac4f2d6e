"""DATA and after (docs/smtp.md §6–§7): the end-of-data checks in order, the stored
bytes, holds, pipelining and the SMTP-smuggling cases."""
from __future__ import annotations

import email
import email.policy
import re

from hypothesis import given, settings, strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from mailgw.smtp.body import BodyDecoder
from tests.helpers import (
    HOSTNAME, Harness, b64, make_store, on_postgres, seed_tenancy, stored_messages,
)

KEY = "K" * 24
#: with a Date and a Message-ID, so that the stored header section is the sent one
HEADERS = ("From: Sender <me@good.example>\r\nTo: you@dest.example\r\nSubject: hi\r\n"
           "Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <hi-1@good.example>\r\n\r\n")
QUEUED = re.compile(rb"^250 OK: queued as ([A-Z0-9]{12})$")


class DataTestBase(unittest.TestCase):
    settings = {}

    @defer.inlineCallbacks
    def setUp(self):
        self.store = yield make_store(self)
        self.tenancy = yield seed_tenancy(self.store)
        self.h = Harness(self, self.store, **self.settings)
        self.h.connect()
        replies = yield self.h.lines("EHLO client.example", "AUTH PLAIN " + b64(f"\0u\0{KEY}"))
        self.assertEqual(replies[-1], b"235 Granted for acme/web")

    @defer.inlineCallbacks
    def submit(self, body: bytes | str, rcpts=("you@dest.example",), sender="me@good.example"):
        if isinstance(body, str):
            body = body.encode("utf-8")
        commands = [f"MAIL FROM:<{sender}>"] + [f"RCPT TO:<{r}>" for r in rcpts] + ["DATA"]
        replies = yield self.h.lines(*commands)
        self.assertEqual(replies[-1], b"354 Go ahead")
        final = yield self.h.send(body)
        return final

    def stored(self):
        return stored_messages(self.store)


class AcceptTests(DataTestBase):
    @defer.inlineCallbacks
    def test_queued_after_commit_with_received_header(self):
        [reply] = yield self.submit(HEADERS + "line one\r\n..dotted\r\n.\r\n",
                                    rcpts=("a@dest.example", "b@dest.example"))
        token = QUEUED.match(reply).group(1).decode()
        entries, bodies = yield self.stored()
        self.assertEqual([e.rcpt_to for e in entries], ["a@dest.example", "b@dest.example"])
        self.assertEqual({e.token for e in entries}, {token})
        self.assertEqual({e.status for e in entries}, {"queued"})
        self.assertEqual(entries[0].server, "acme/web")
        self.assertEqual(entries[0].domain, "good.example")
        self.assertEqual(entries[0].mail_from, "me@good.example")
        received, rest = bodies[0].split(b"\r\n", 1)
        self.assertRegex(received.decode(), (
            r"^Received: from client\.example \(192\.0\.2\.7 \[192\.0\.2\.7\]\) by "
            + re.escape(HOSTNAME) + r" with ESMTPA id " + token
            + r"; \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000$"))
        self.assertEqual(rest, (HEADERS + "line one\r\n.dotted\r\n").encode())
        self.assertEqual(entries[0].size, len(bodies[0]))

    @defer.inlineCallbacks
    def test_session_back_to_greeted(self):
        yield self.submit(HEADERS + ".\r\n")
        replies = yield self.h.lines("MAIL FROM:<me@good.example>", "RCPT TO:<x@dest.example>")
        self.assertEqual(replies, [b"250 OK", b"250 OK"])

    @defer.inlineCallbacks
    def test_bare_lf_stored_as_crlf_and_8bit_kept(self):
        yield self.submit(HEADERS.encode() + b"caf\xc3\xa9\nnext\r\n.\r\n")
        _, [body] = yield self.stored()
        self.assertTrue(body.endswith(b"caf\xc3\xa9\r\nnext\r\n"))

    @defer.inlineCallbacks
    def test_privacy_mode_received_header(self):
        yield self.store.update_server("acme", "web", privacy_mode=True)
        h = Harness(self, self.store)
        h.connect()
        yield h.lines("EHLO c", "AUTH PLAIN " + b64(f"\0u\0{KEY}"), "MAIL FROM:<>",
                      "RCPT TO:<a@b.example>", "DATA")
        [reply] = yield h.send(HEADERS + ".\r\n")
        token = QUEUED.match(reply).group(1).decode()
        _, [body] = yield self.stored()
        self.assertRegex(body.split(b"\r\n")[0].decode(),
                         rf"^Received: by {re.escape(HOSTNAME)} with ESMTPA id {token}; ")
        self.assertNotIn(b"192.0.2.7", body)

    @defer.inlineCallbacks
    def test_pipelined_transaction_replies_in_order(self):
        replies = yield self.h.send(
            "MAIL FROM:<me@good.example>\r\nRCPT TO:<a@dest.example>\r\n"
            "RCPT TO:<b@dest.example>\r\nDATA\r\n" + HEADERS + "hi\r\n.\r\nNOOP\r\n")
        self.assertEqual(replies[:4], [b"250 OK", b"250 OK", b"250 OK", b"354 Go ahead"])
        self.assertRegex(replies[4], QUEUED)
        self.assertEqual(replies[5:], [b"250 OK"])
        entries, _ = yield self.stored()
        self.assertEqual(len(entries), 2)

    @defer.inlineCallbacks
    def test_body_in_tiny_pieces(self):
        yield self.h.lines("MAIL FROM:<>", "RCPT TO:<a@dest.example>", "DATA")
        data = (HEADERS + "x\r\n..y\r\n.\r\n").encode()
        replies = []
        for i in range(len(data)):
            replies += (yield self.h.send(data[i:i + 1]))
        self.assertRegex(replies[0], QUEUED)
        _, [body] = yield self.stored()
        self.assertTrue(body.endswith(HEADERS.encode() + b"x\r\n.y\r\n"))


class CompletionTests(DataTestBase):
    """RFC 5322 section 3.6: a message gets the Date and Message-ID it lacks."""

    @defer.inlineCallbacks
    def test_missing_date_and_message_id_are_added(self):
        head = "From: Sender <me@good.example>\r\nSubject: hi\r\n\r\n"
        [reply] = yield self.submit(head + "body\r\n.\r\n")
        token = QUEUED.match(reply).group(1).decode()
        _, [body] = yield self.stored()
        parsed = email.message_from_bytes(body, policy=email.policy.default)
        self.assertEqual(parsed["Message-ID"], f"<{token}@{HOSTNAME}>")
        self.assertEqual(len(parsed.get_all("Date")), 1)
        self.assertIsNotNone(parsed["Date"].datetime)
        self.assertTrue(body.endswith(b"\r\nSubject: hi\r\nDate: " + parsed["Date"].encode()
                                      + b"\r\nMessage-ID: <" + token.encode() + b"@"
                                      + HOSTNAME.encode() + b">\r\n\r\nbody\r\n"))

    @defer.inlineCallbacks
    def test_present_ones_are_kept_whatever_their_case(self):
        head = ("From: me@good.example\r\nDATE: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
                "message-id: <own@good.example>\r\n\r\n")
        yield self.submit(head + "body\r\n.\r\n")
        _, [body] = yield self.stored()
        self.assertTrue(body.endswith((head + "body\r\n").encode()))

    @defer.inlineCallbacks
    def test_only_the_missing_one_is_added(self):
        head = "From: me@good.example\r\nMessage-ID: <own@good.example>\r\n\r\n"
        yield self.submit(head + "body\r\n.\r\n")
        _, [body] = yield self.stored()
        parsed = email.message_from_bytes(body, policy=email.policy.default)
        self.assertEqual(parsed.get_all("Message-ID"), ["<own@good.example>"])
        self.assertEqual(len(parsed.get_all("Date")), 1)


class SmugglingTests(DataTestBase):
    @defer.inlineCallbacks
    def check_not_ended_by(self, marker: bytes):
        smuggled = b"MAIL FROM:<evil@good.example>\r\nRCPT TO:<victim@dest.example>\r\nDATA\r\n"
        replies = yield self.submit(HEADERS.encode() + b"text" + marker + smuggled
                                    + b"more\r\n.\r\n")
        self.assertEqual(len(replies), 1)
        self.assertRegex(replies[0], QUEUED)
        entries, [body] = yield self.stored()
        self.assertEqual([e.rcpt_to for e in entries], ["you@dest.example"])
        self.assertIn(b"MAIL FROM:<evil@good.example>", body)

    def test_lf_dot_lf(self):
        return self.check_not_ended_by(b"\n.\n")

    def test_lf_dot_crlf(self):
        return self.check_not_ended_by(b"\n.\r\n")

    def test_crlf_dot_lf(self):
        return self.check_not_ended_by(b"\r\n.\n")

    def test_cr_dot_cr(self):
        return self.check_not_ended_by(b"\r.\r")


class CheckTests(DataTestBase):
    settings = {"max_message_size": 2048}

    @defer.inlineCallbacks
    def assertRejected(self, body, reply):
        replies = yield self.submit(body)
        self.assertEqual(replies, [reply])
        entries, _ = yield self.stored()
        self.assertEqual(entries, [])
        # the transaction is reset; the session is usable
        again = yield self.h.lines("MAIL FROM:<me@good.example>")
        self.assertEqual(again, [b"250 OK"])

    def test_too_large_counts_received_header(self):
        body = HEADERS + "x" * (2048 - len(HEADERS) - 10) + "\r\n.\r\n"
        return self.assertRejected(body, b"552 Message too large (maximum size 0MB)")

    def test_loop_detected(self):
        loops = "".join(f"Received: from a by {HOSTNAME} with ESMTP id X{i}; date\r\n"
                        for i in range(4))
        return self.assertRejected(loops + HEADERS + ".\r\n", b"550 Loop detected")

    @defer.inlineCallbacks
    def test_three_own_received_plus_ours_is_not_a_loop(self):
        loops = "".join(f"Received: by {HOSTNAME} with ESMTP id X{i}; date\r\n" for i in range(3))
        [reply] = yield self.submit(loops + "Received: by other.example; x\r\n" + HEADERS + ".\r\n")
        self.assertRegex(reply, QUEUED)

    def test_from_not_valid(self):
        return self.assertRejected("From: a@evil.example\r\n\r\nx\r\n.\r\n",
                                   b"530 From/Sender name is not valid")

    def test_from_with_one_bad_mailbox(self):
        return self.assertRejected("From: a@evil.example, <b@good.example>\r\n\r\n.\r\n",
                                   b"530 From/Sender name is not valid")

    def test_unverified_domain(self):
        return self.assertRejected("From: a@unverified.example\r\n\r\n.\r\n",
                                   b"530 From/Sender name is not valid")

    def test_no_from(self):
        return self.assertRejected("Subject: x\r\n\r\n.\r\n", b"530 From/Sender name is not valid")

    def test_sender_ignored_unless_allowed(self):
        return self.assertRejected(
            "From: a@evil.example\r\nSender: s@good.example\r\n\r\n.\r\n",
            b"530 From/Sender name is not valid")

    @defer.inlineCallbacks
    def test_sender_allowed(self):
        yield self.store.update_server("acme", "web", allow_sender_header=True)
        [reply] = yield self.submit("From: a@evil.example\r\nSender: s@org.example\r\n\r\n.\r\n")
        self.assertRegex(reply, QUEUED)
        entries, _ = yield self.stored()
        self.assertEqual(entries[0].domain, "org.example")

    @defer.inlineCallbacks
    def test_organization_domain_and_case(self):
        [reply] = yield self.submit("From: \"Me\" <me@ORG.Example>\r\n\r\n.\r\n")
        self.assertRegex(reply, QUEUED)

    @defer.inlineCallbacks
    def test_use_for_any(self):
        yield self.store.add_domain("any.example", server=("acme", "web"), verified=True,
                                    use_for_any=True)
        [reply] = yield self.submit("From: x@anything.example\r\n\r\n.\r\n")
        self.assertRegex(reply, QUEUED)

    @defer.inlineCallbacks
    def test_store_outage_at_final_dot(self):
        yield self.h.lines("MAIL FROM:<>", "RCPT TO:<a@dest.example>", "DATA")
        yield self.store.close()
        replies = yield self.h.send(HEADERS + ".\r\nNOOP\r\n")
        self.assertEqual(replies, [b"451 Temporary failure, please try again later", b"250 OK"])


class HoldTests(DataTestBase):
    @defer.inlineCallbacks
    def status_after_submit(self):
        [reply] = yield self.submit(HEADERS + ".\r\n")
        self.assertRegex(reply, QUEUED)
        entries, _ = yield self.stored()
        return entries[-1].status, entries[-1].hold_reason

    @defer.inlineCallbacks
    def test_credential_on_hold(self):
        found = yield self.store.credential_by_key(KEY, "smtp")
        yield self.store.set_credential_hold(found[0].id, True)
        self.assertEqual((yield self.status_after_submit()), ("held", "credential on hold"))

    @defer.inlineCallbacks
    def test_development_mode(self):
        yield self.store.update_server("acme", "web", mode="development")
        self.assertEqual((yield self.status_after_submit()), ("held", "server in development mode"))

    @defer.inlineCallbacks
    def test_send_limit(self):
        yield self.store.update_server("acme", "web", send_limit=1)
        self.assertEqual((yield self.status_after_submit()), ("queued", None))
        self.assertEqual((yield self.status_after_submit()), ("held", "send limit reached"))


def _decode_in_pieces(data: bytes, cuts):
    decoder, out = BodyDecoder(), []
    previous = 0
    for cut in sorted(cuts) + [len(data)]:
        body, rest = decoder.feed(data[previous:cut])
        out.append(body)
        previous = cut
        if rest is not None:
            return b"".join(out), rest + data[previous:]
    return b"".join(out), None


class BodyDecoderTests(unittest.TestCase):
    def test_cases(self):
        cases = {
            b".\r\n": (b"", b""),
            b"a\r\n.\r\nNEXT": (b"a\r\n", b"NEXT"),
            b"..x\r\n...\r\n.\r\n": (b".x\r\n..\r\n", b""),
            # Line ends other than CRLF pass through; the core canonicalises them.
            b"a\n.\nb\r\n.\r\n": (b"a\n.\nb\r\n", b""),
            b"a\r\n.\nb\r\n.\r\n": (b"a\r\n.\nb\r\n", b""),
            b"a\r.\rb\r\n.\r\n": (b"a\r.\rb\r\n", b""),
            b"a\r\n.": (b"a\r\n", None),
        }
        for data, expected in cases.items():
            self.assertEqual(_decode_in_pieces(data, []), expected, data)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"x", b"..", b"\r\n.\r\n"]),
                    max_size=30),
           st.lists(st.integers(min_value=0, max_value=200), max_size=6))
    def test_any_split_gives_the_same_result(self, parts, cuts):
        data = b"".join(parts)
        cuts = [c for c in cuts if c <= len(data)]
        self.assertEqual(_decode_in_pieces(data, cuts), _decode_in_pieces(data, []))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"x", b"\r\n\r\n"]), max_size=30),
           st.lists(st.integers(min_value=0, max_value=200), max_size=6),
           st.sampled_from([b".\r\n", b"..\r\n.\r\n", b".x\r\n.\r\n", b".\n\r\n.\r\n"]))
    def test_dot_free_chunks_then_the_end(self, parts, cuts, end):
        # Chunks without a dot take a shorter path: they must read as the
        # same bytes in one piece with a dot would.
        data = b"".join(parts) + b"\r\n" + end + b"NEXT"
        cuts = [c for c in cuts if c <= len(data)]
        body, rest = _decode_in_pieces(data, cuts)
        self.assertEqual((body, rest), _decode_in_pieces(data, []))
        self.assertEqual(rest, b"NEXT")
        self.assertTrue(body.startswith(b"".join(parts)))


PostgresAcceptTests = on_postgres(AcceptTests)
PostgresSmugglingTests = on_postgres(SmugglingTests)
PostgresCheckTests = on_postgres(CheckTests)
PostgresHoldTests = on_postgres(HoldTests)
