"""One message on its way in, from either protocol.

Bytes are written as they arrive (SMTP: already unstuffed; HTTP: the decoded
message). The header section is kept whole, up to C{max_header_size}, and
parsed once when its empty line arrives; the body is streamed to a spool file
(in memory while small), with bare CR and bare LF made CRLF. Nothing past the
size limit is kept. L{IncomingMessage.end} then gives the parsed fields, or
raises the first refusal in the wire contract's order.

What is spooled is exactly what the policy parsed: the canonical header
section, then the canonical body, every line ending in CRLF. The one
addition is what RFC 5322 section 3.6 requires of every message and a
client may leave out: a C{Date} and a C{Message-ID} field, written at the
end of the header section by the C{complete} callable when missing.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable

from mailgw.submission.headers import HEAD_END, canonical_header_section, parse_fields
from mailgw.submission.refusals import (
    HeaderSectionTooLarge, MalformedBody, MessageTooLarge, Refusal, SpoolFailure,
)

#: bodies up to this size never touch the disk before the commit
SPOOL_MEMORY = 256 * 1024


def canonical_body(data: bytes) -> bytes:
    """C{data} with every bare CR and bare LF made CRLF (a whole chunk: the
    caller holds back a CR that ends it)."""
    lf = data.count(b"\n")
    if data.count(b"\r") == lf and data.count(b"\r\n") == lf:
        return data  # the common case: three scans at C speed, no copy
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


class IncomingMessage:
    """The bytes of one submission between the first byte and the commit.

    @ivar size: the bytes of the message as it would be stored.
    @ivar spool: the file holding the stored form (read it from the start).
    @ivar fields: once L{end} has returned, the header fields it returned.
    """

    def __init__(self, received: bytes, *, max_size: int, max_header_size: int,
                 spool_directory: str | None = None,
                 complete: Callable[[list[tuple[str, str]]], bytes] | None = None):
        """
        @param received: our C{Received:} line (CRLF-terminated, not empty),
            the first header of the stored message.
        @param complete: given the parsed fields, the fields (CRLF-terminated
            lines) to add at the end of the header section, or C{b""}.
        """
        self._complete = complete
        if not received.endswith(b"\r\n"):
            raise ValueError("the Received line must end in CRLF")
        self._max_size = max_size
        self._max_header_size = max_header_size
        self.spool = tempfile.SpooledTemporaryFile(
            max_size=SPOOL_MEMORY, dir=spool_directory, prefix="mailgw-")
        self.size = 0
        self._head: bytearray | None = bytearray(received)
        self._head_start = len(received) - 1
        self.fields = None
        self._refusal: Refusal | None = None
        self._cr = b""
        self._last = b""

    def write(self, chunk: bytes) -> None:
        """Append message bytes, with any line ends."""
        if self._head is None:
            return self._write_body(chunk)
        head = self._head
        search_from = max(self._head_start, len(head) - 2)
        head += chunk
        # Searching from the Received line's own LF also finds an empty first line.
        match = HEAD_END.search(head, search_from)
        if match is not None:
            self._head = None
            self._end_head(bytes(head[:match.end()]))
            self._write_body(bytes(head[match.end():]))
        elif len(head) > self._max_header_size:
            self._refuse(HeaderSectionTooLarge(self._max_header_size))
            self._head = None
            self.size += len(head)

    def _end_head(self, raw: bytes) -> None:
        if len(raw) > self._max_header_size:
            self.size += len(raw)
            return self._refuse(HeaderSectionTooLarge(self._max_header_size))
        try:
            section = canonical_header_section(raw)
            self.fields = parse_fields(section)
        except Refusal as refusal:
            self.size += len(raw)
            return self._refuse(refusal)
        if self._complete is not None:
            added = self._complete(self.fields)
            if added:
                # before the empty line, or after the last field of a message
                # that is all header section
                cut = len(section) - 2 if section.endswith(b"\r\n\r\n") else len(section)
                section = section[:cut] + added + section[cut:]
                self.fields = self.fields + parse_fields(added)
        self._store(section)

    def _write_body(self, data: bytes) -> None:
        if self._cr:
            data = self._cr + data
            self._cr = b""
        if data.endswith(b"\r"):
            self._cr, data = b"\r", data[:-1]
        if not data:
            return
        if b"\0" in data:
            self._refuse(MalformedBody())
        self._store(canonical_body(data))

    def _store(self, data: bytes) -> None:
        self.size += len(data)
        self._last = data[-1:] or self._last
        if self._refusal is None and self.size <= self._max_size:
            try:
                self.spool.write(data)
            except OSError as e:
                # A full disk must cost the client a 452, not its connection.
                self._refuse(SpoolFailure(e))
                self.spool.close()

    def _refuse(self, refusal: Refusal) -> None:
        if self._refusal is None:
            self._refusal = refusal

    def end(self) -> list[tuple[str, str]]:
        """No more bytes will come: complete the last line and check.

        @return: the header fields, C{(lower-cased name, unfolded value)}.
        @raise Refusal: the first problem, in the wire contract's order: size,
            then the header section or body faults.
        """
        if self._head is not None:  # no empty line: the whole message is headers
            head, self._head = bytes(self._head), None
            if not head.endswith(b"\n"):
                head += b"\r\n"
            self._end_head(head)
        if self._cr:
            self._cr = b""
            self._store(b"\r\n")
        elif self._last != b"\n":
            self._store(b"\r\n")
        if self.size > self._max_size and not isinstance(self._refusal, SpoolFailure):
            raise MessageTooLarge(self._max_size)
        if self._refusal is not None:
            raise self._refusal
        return self.fields

    def close(self) -> None:
        """Forget the spooled bytes."""
        self.spool.close()
