"""The DATA encoder as a receiver reads it (RFC 5321 §4.5.2): whatever body
it is given, in whatever chunks, it writes only CRLF lines, dot-stuffed, and
the one line that is exactly "." comes last. A body with bare CR or LF line
ends (SMTP smuggling lookalikes among them) goes out as CRLF lines, so no
receiver can find an end of data, and commands after it, inside it."""
from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from mailgw.relay.wire import DotStuffer

FRAGMENTS = [b"\r", b"\n", b"\r\n", b".", b"a", b"\x00", b"..",
             b"\r.\r", b"\r.\n", b"\n.\r", b"\r\n.\r\nMAIL FROM:<x@y>\r\n", b"\n.\n"]

LOOKALIKES = [b"\r.\r", b"\r.\n", b"\n.\r", b"\r\n.\r\nMAIL FROM:<x@y>\r\n", b"\n.\n"]


def canonical(body: bytes) -> bytes:
    """C{body} as CRLF lines, the last one ended too: what should arrive."""
    body = re.sub(rb"\r\n|\r|\n", b"\r\n", body)
    return body if body == b"" or body.endswith(b"\r\n") else body + b"\r\n"


def encode(body: bytes, cuts=()) -> bytes:
    """C{body} through one L{DotStuffer}, cut into chunks at C{cuts}."""
    stuffer, out, last = DotStuffer(), [], 0
    for cut in sorted(c for c in cuts if c <= len(body)) + [len(body)]:
        out.append(stuffer.feed(body[last:cut]))
        last = cut
    return b"".join(out) + stuffer.end()


def receive(wire: bytes) -> tuple[bytes, bytes]:
    """What a receiver makes of C{wire} after DATA: the message (lines up to
    the first that is exactly ".", a leading dot taken off) and what follows
    that line (which it would read as commands)."""
    lines = wire.split(b"\r\n")
    end = lines.index(b".")
    message = b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n"
                       for line in lines[:end])
    return message, b"\r\n".join(lines[end + 1:])


class EncoderTests(unittest.SynchronousTestCase):
    def assertSafe(self, body: bytes, cuts=()):
        wire = encode(body, cuts)
        pairs = wire.count(b"\r\n")
        self.assertEqual((wire.count(b"\r"), wire.count(b"\n")), (pairs, pairs),
                         f"a bare CR or LF in {wire!r}")
        message, after = receive(wire)
        self.assertEqual(message, canonical(body), wire)
        self.assertEqual(after, b"", f"the end of data comes early in {wire!r}")
        self.assertTrue(wire.endswith(b"\r\n.\r\n") or wire == b".\r\n", wire)
        return wire

    def test_smuggling_lookalikes(self):
        for body in LOOKALIKES:
            for cuts in ([], [1], [2], [1, 2], list(range(len(body)))):
                self.assertSafe(body, cuts)

    def test_lookalikes_on_the_wire(self):
        self.assertEqual(encode(b"\r.\r"), b"\r\n..\r\n.\r\n")
        self.assertEqual(encode(b"\n.\n"), b"\r\n..\r\n.\r\n")
        self.assertEqual(encode(b"a\n.\r", [2]), b"a\r\n..\r\n.\r\n")
        self.assertEqual(encode(b"\r\n.\r\nMAIL FROM:<x@y>\r\n"),
                         b"\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n")

    def test_nul_bytes_kept(self):
        self.assertEqual(encode(b"\x00.\x00\n.\x00"), b"\x00.\x00\r\n..\x00\r\n.\r\n")

    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.sampled_from(FRAGMENTS), max_size=40),
           st.lists(st.integers(min_value=0, max_value=300), max_size=8))
    def test_any_body_any_chunks(self, fragments, cuts):
        body = b"".join(fragments)
        wire = self.assertSafe(body, cuts)
        self.assertEqual(wire, encode(body), "the chunking changed the output")
