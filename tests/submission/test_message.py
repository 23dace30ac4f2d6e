"""L{mailgw.submission.IncomingMessage}: canonical line ends across any
chunking, the header section kept whole up to its limit, and a spool that
fails (a full disk) as a refusal rather than an exception."""
from __future__ import annotations

import errno

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from mailgw.submission import (
    HeaderSectionTooLarge, IncomingMessage, MalformedBody, MessageTooLarge, Refusal,
    SpoolFailure,
)

RECEIVED = b"Received: by gw.test with ESMTPA id X; Thu, 01 Jan 1970 00:00:00 +0000\r\n"


def incoming(max_size=1 << 20, max_header_size=4096):
    return IncomingMessage(RECEIVED, max_size=max_size, max_header_size=max_header_size)


def stored(chunks, **limits):
    """C{(stored bytes or the refusal, fields)} for the message written as C{chunks}."""
    message = incoming(**limits)
    try:
        for chunk in chunks:
            message.write(chunk)
        fields = message.end()
    except Refusal as refusal:
        return refusal, None
    finally:
        data = b""
        if not message.spool.closed:
            message.spool.seek(0)
            data = message.spool.read()
        message.close()
    return data, fields


class CompletionTests(unittest.TestCase):
    """What C{complete} returns is written at the end of the header section."""

    def complete(self, raw: bytes):
        seen = []

        def complete(fields):
            seen.append(fields)
            return b"Date: now\r\n"
        message = IncomingMessage(RECEIVED, max_size=1 << 20, max_header_size=4096,
                                  complete=complete)
        message.write(raw)
        fields = message.end()
        message.spool.seek(0)
        data = message.spool.read()
        message.close()
        return data, fields, seen

    def test_before_the_empty_line(self):
        data, fields, seen = self.complete(b"From: a@own.test\r\n\r\nbody\r\n")
        self.assertEqual(data, RECEIVED + b"From: a@own.test\r\nDate: now\r\n\r\nbody\r\n")
        self.assertEqual(fields[-1], ("date", "now"))
        self.assertEqual([f[0] for f in seen[0]], ["received", "from"])

    def test_after_the_last_field_of_a_message_without_a_body(self):
        data, _, _ = self.complete(b"From: a@own.test")
        self.assertEqual(data, RECEIVED + b"From: a@own.test\r\nDate: now\r\n")

    def test_after_a_folded_last_field(self):
        data, _, _ = self.complete(b"Subject: a\r\n b\r\n\r\nx\r\n")
        self.assertEqual(data, RECEIVED + b"Subject: a\r\n b\r\nDate: now\r\n\r\nx\r\n")


class IncomingMessageTests(unittest.TestCase):
    def test_canonical_message_is_stored_as_it_came(self):
        raw = b"From: a@own.test\r\nSubject: x\r\n\r\nbody\r\n"
        data, fields = stored([raw])
        self.assertEqual(data, RECEIVED + raw)
        self.assertEqual(fields[1:], [("from", "a@own.test"), ("subject", "x")])

    def test_last_line_gets_its_line_end(self):
        self.assertEqual(stored([b"From: a@own.test\r\n\r\nno end"])[0],
                         RECEIVED + b"From: a@own.test\r\n\r\nno end\r\n")
        self.assertEqual(stored([b"From: a@own.test"])[0], RECEIVED + b"From: a@own.test\r\n")
        self.assertEqual(stored([b"From: a@own.test\r\n\r\nend\r"])[0],
                         RECEIVED + b"From: a@own.test\r\n\r\nend\r\n")

    def test_header_section_limit_counts_the_whole_section(self):
        raw = b"From: a@own.test\r\n" + b"X: " + b"p" * 5000 + b"\r\n\r\nbody"
        refusal, _ = stored([raw[:100], raw[100:]])
        self.assertIsInstance(refusal, HeaderSectionTooLarge)
        refusal, _ = stored([b"X: " + b"p" * 5000])  # no empty line at all
        self.assertIsInstance(refusal, HeaderSectionTooLarge)

    def test_size_comes_before_other_refusals(self):
        refusal, _ = stored([b"X: a\rb\r\n\r\n" + b"z" * 200], max_size=100)
        self.assertIsInstance(refusal, MessageTooLarge)

    def test_nul_in_body(self):
        refusal, _ = stored([b"From: a@own.test\r\n\r\na\x00b"])
        self.assertIsInstance(refusal, MalformedBody)

    def test_full_disk_is_a_refusal(self):
        for code, full in ((errno.ENOSPC, True), (errno.EDQUOT, True), (errno.EIO, False)):
            message = incoming()

            def write(data, code=code):
                raise OSError(code, "simulated")
            message.spool.write = write
            message.write(b"From: a@own.test\r\n\r\nbody\r\n")
            refusal = self.assertRaises(SpoolFailure, message.end)
            self.assertEqual(refusal.full, full)
            message.close()

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"From: a@own.test",
                                     b": ", b" ", b"."]), max_size=40),
           st.lists(st.integers(min_value=0, max_value=120), max_size=8))
    def test_any_chunking_stores_the_same_canonical_bytes(self, parts, cuts):
        raw = b"".join(parts)
        cuts = sorted(c for c in cuts if c <= len(raw))
        chunks = [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)], strict=True)]
        whole, pieces = stored([raw]), stored(chunks)
        if isinstance(whole[0], Refusal):
            self.assertIs(type(pieces[0]), type(whole[0]))
            return
        self.assertEqual(pieces, whole)
        data = whole[0]
        self.assertEqual(data.count(b"\r"), data.count(b"\r\n"))
        self.assertEqual(data.count(b"\n"), data.count(b"\r\n"))
        self.assertTrue(data.endswith(b"\r\n"))


class MessageDateTests(unittest.TestCase):
    """The date of Received and Date fields, made once per second."""

    def test_as_email_utils_formats_it_whatever_came_before(self):
        from datetime import UTC, datetime
        from email.utils import format_datetime, parsedate_to_datetime

        from mailgw.submission.core import message_date
        for when in (0, 0.999, 1.0, 1_700_000_000.2, 1_700_000_000.9, 1_700_000_001.0,
                     1_700_000_000.5, 4_102_444_799.99):
            expected = format_datetime(datetime.fromtimestamp(int(when), UTC))
            self.assertEqual(message_date(when), expected, when)
            self.assertEqual(parsedate_to_datetime(message_date(when)).timestamp(), int(when))
