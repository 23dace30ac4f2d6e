"""The sender policy against a second, independent parser.

Generated header sections (folding, encoded words, comments, quoted C{@},
groups, several From/Sender fields, bare CR and LF, NUL, long lines, own and
foreign domains) go through the core exactly as a submission does. For every
message the core accepts, the stored bytes are parsed with Python's C{email}
package under both the C{compat32} and the C{default} policies: every mailbox
of every From (and of the Sender, where the Sender is what passed) must be in
an authorised domain. This is the invariant of docs/submission.md seen from a
receiver's side.
"""
from __future__ import annotations

import email
import email.policy
import email.utils

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial import unittest

from mailgw.submission import IncomingMessage, Refusal
from mailgw.submission.policy import AuthorisedDomains, check_sender_fields

OWN = "own.test"
AUTHORISED = AuthorisedDomains(frozenset({OWN}), None)
RECEIVED = b"Received: by gw.test with ESMTPA id X; Thu, 01 Jan 1970 00:00:00 +0000\r\n"

MAILBOXES = [
    "a@own.test", "ceo@foreign.test", "<a@own.test>", "A <a@OWN.test>", "<ceo@foreign.test>",
    '"ceo@foreign.test" <a@own.test>', '"a@own.test" <ceo@foreign.test>',
    "(ceo@foreign.test) a@own.test", "a@own.test (ceo@foreign.test)",
    "=?utf-8?q?ceo=40foreign.test?= <a@own.test>", "=?utf-8?q?ceo=40foreign.test?=",
    "=?utf-8?b?Y2VvQGZvcmVpZ24udGVzdA==?=", "Team: a@own.test, ceo@foreign.test;",
    "Team: a@own.test;", "Undisclosed:;", '"a@own.test"@foreign.test',
    '"ceo@foreign.test"@own.test', "a@own.test <ceo@foreign.test>",
    "<@foreign.test:a@own.test>", "<@own.test:ceo@foreign.test>", "a @ own . test",
    "ceo@foreign.test.", "a@own.test.", "a(b)@own.test", "a\\@foreign.test@own.test",
    "ceo@[127.0.0.1]", "ceo", "\"\" <a@own.test>", "a@own.test,", ",a@own.test",
]
OWN_MAILBOXES = ["a@own.test", "<a@own.test>", "A <a@OWN.test>", "B <b@own.test>"]
SEPARATORS = [", "] * 12 + [",", " ", "\r\n ", "\r\n\t", "\r", "\n", "\x00", ";", "",
                           "\r\n"]
NAMES = ["From"] * 8 + ["Sender"] * 3 + ["Subject"] * 3 + [
    "from", "FROM", "From ", "Subject", "X-A", "Reply-To", "Received", " From", "From\x00",
    "Fr\u00f6m"]
LINE_ENDS = ["\r\n"] * 12 + ["\n", "\r"]

mailbox = st.one_of(st.sampled_from(OWN_MAILBOXES), st.sampled_from(MAILBOXES))
noise = st.text(alphabet="a@.,<>\"() \t:;=?", max_size=6)
values = st.lists(st.tuples(st.one_of(st.sampled_from(OWN_MAILBOXES), mailbox, noise),
                            st.sampled_from(SEPARATORS)),
                  min_size=1, max_size=4).map(
    lambda parts: "".join(m + sep for m, sep in parts[:-1]) + parts[-1][0])
fields = st.lists(st.tuples(st.sampled_from(NAMES), values, st.sampled_from(LINE_ENDS)),
                  min_size=1, max_size=5)


def section_bytes(generated, padding: int) -> bytes:
    text = "".join(f"{name}: {value}{end}" for name, value, end in generated)
    return text.encode("utf-8", "surrogateescape") + b"X-Pad: " + b"p" * padding + b"\r\n"


def domain_of(address: str) -> str | None:
    local, at, domain = address.rpartition("@")
    return domain.lower().rstrip(".") if at else None


def compat32_mailboxes(values):
    return [address for _, address in email.utils.getaddresses(values) if address]


def default_mailboxes(headers):
    return [f"{a.username}@{a.domain}" if a.domain else a.username
            for header in headers for a in header.addresses
            if a.username or a.domain]


class OracleTests(unittest.TestCase):
    def accepted(self, raw: bytes, allow_sender: bool):
        """C{(stored bytes, whether the From passed)}, or None when the core
        refuses the message."""
        message = IncomingMessage(RECEIVED, max_size=10 * 1024 * 1024,
                                  max_header_size=64 * 1024)
        try:
            message.write(raw)
            fields_ = message.end()
        except Refusal:
            message.close()
            return None
        by_from = check_sender_fields(fields_, allow_sender_header=False,
                                      authorised=AUTHORISED)
        domain = by_from or check_sender_fields(fields_, allow_sender_header=allow_sender,
                                                authorised=AUTHORISED)
        message.spool.seek(0)
        stored = message.spool.read()
        message.close()
        return (stored, by_from is not None) if domain is not None else None

    def assertAuthorised(self, stored: bytes, by_from: bool):
        """Every mailbox of the header that passed, as each C{email} policy
        reads the stored bytes, is in the authorised domain."""
        self.assertEqual(stored.count(b"\r"), stored.count(b"\r\n"), stored)
        self.assertEqual(stored.count(b"\n"), stored.count(b"\r\n"), stored)
        name = "From" if by_from else "Sender"
        compat = email.message_from_bytes(stored, policy=email.policy.compat32)
        modern = email.message_from_bytes(stored, policy=email.policy.default)
        for label, mailboxes in (
                ("compat32", compat32_mailboxes(compat.get_all(name, []))),
                ("default", default_mailboxes(modern.get_all(name, [])))):
            foreign = [m for m in mailboxes if domain_of(m) != OWN]
            self.assertEqual(foreign, [], f"{label} reads {name} {mailboxes!r} in {stored!r}")

    @settings(max_examples=3000, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(fields, st.booleans(), st.sampled_from([0, 0, 0, 2000]),
           st.sampled_from([b"\r\n", b"\n", b"\r\r\n", b""]),
           st.sampled_from([b"body\r\n", b"From: ceo@foreign.test\r\n", b""]))
    def test_every_accepted_message_is_authorised_for_pythons_email(
            self, generated, allow_sender, padding, blank, body):
        raw = section_bytes(generated, padding) + blank + body
        result = self.accepted(raw, allow_sender)
        if result is not None:
            self.assertAuthorised(*result)

    def test_examples_that_must_be_refused(self):
        for raw in [
            b"X-A: b\rFrom: ceo@foreign.test\r\r\nFrom: a@own.test\r\n\r\n",
            b"From: a@own.test\r\n \r\nFrom: ceo@foreign.test\r\n\r\n",
            b"From: a@own.test\r\nFrom : ceo@foreign.test\r\n\r\n",
            b"From: a@own.test, =?utf-8?q?ceo=40foreign.test?=\r\n\r\n",
            # compat32 reads a display name folded inside its quotes as a mailbox
            b'From: "\r\n ceo@foreign.test, "<a@own.test>\r\n\r\n',
        ]:
            self.assertIsNone(self.accepted(raw, True), raw)
