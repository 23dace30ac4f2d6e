"""The SMTP client's wire: reply parsing, the DATA encoder, and the
connection protocol that hands out one reply at a time with a deadline.

Twisted's C{SMTPClient} is not used: its C{transformChunk} turns CRLF into
CR CR LF and misses the dot-stuffing of a line that starts exactly at a
16 KiB chunk boundary, which ends DATA early (notes/TWISTED.md §6).
L{DotStuffer} keeps its state across chunks, so a CRLF body goes out
byte-exact whatever the chunk sizes are, and anything else goes out as
CRLF lines too.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from twisted.internet import defer, error, interfaces, protocol
from twisted.python.failure import Failure
from zope.interface import implementer

#: the longest reply line accepted (RFC 5321 says 512; be lenient, not unbounded)
MAX_LINE = 16 * 1024
#: the most lines one reply may have
MAX_REPLY_LINES = 256


@dataclass(frozen=True)
class Reply:
    """One (possibly multi-line) server reply."""
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The reply as one line: code and text, lines joined by spaces."""
        return f"{self.code} " + " ".join(line for line in self.lines if line)

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600


class MalformedReply(Exception):
    """The server sent something that is not an SMTP reply."""


class SMTPTimeout(Exception):
    """No reply (or no room to write) within the command timeout."""


class ReplyParser:
    """Feed bytes; get complete L{Reply}s out."""

    def __init__(self):
        self._buffer = b""
        self._lines = []

    def feed(self, data: bytes) -> list[Reply]:
        self._buffer += data
        replies = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    raise MalformedReply("reply line too long")
                return replies
            line, self._buffer = self._buffer[:end].rstrip(b"\r"), self._buffer[end + 1:]
            reply = self._line(line)
            if reply is not None:
                replies.append(reply)

    def _line(self, line: bytes) -> Reply | None:
        if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
            raise MalformedReply(f"not an SMTP reply: {line[:80]!r}")
        code = int(line[:3])
        if self._lines and code != self._lines[0][0]:
            raise MalformedReply("reply code changed inside a multi-line reply")
        self._lines.append((code, line[4:].decode("utf-8", "replace")))
        if len(self._lines) > MAX_REPLY_LINES:
            raise MalformedReply("reply has too many lines")
        if line[3:4] == b"-":
            return None
        lines, self._lines = self._lines, []
        return Reply(code, tuple(text for _, text in lines))


class DotStuffer:
    """The DATA encoder: what it writes is only CRLF-terminated lines,
    dot-stuffed (RFC 5321 §4.5.2), then CRLF "." CRLF; whatever the chunks
    are, it keeps its state across their boundaries.

    Stored bodies already have CRLF line ends, and they go out unchanged
    but for the stuffing. The encoder does not rely on that: a bare CR or a
    bare LF becomes CRLF (RFC 5321 §2.3.8 allows no other line end), and a
    line it starts is stuffed like any other. Otherwise a body holding
    "LF . LF" or "CR . CR" could end the transaction early at a receiver
    that takes a bare line end for one, and what follows would be read as
    commands (SMTP smuggling). A body that does not end in CRLF gets one
    before the final dot. NUL bytes are left as they are.
    """

    def __init__(self):
        self._line_start = True  # the next byte written starts a line
        self._cr = False  # a CR ended the last chunk: its LF may start the next

    def feed(self, chunk: bytes) -> bytes:
        """@return: the bytes to write for C{chunk} (a CR at its end is kept
            back until the next chunk or L{end} shows what follows it)."""
        if self._cr:
            chunk, self._cr = b"\r" + chunk, False
        if chunk[-1:] == b"\r":
            chunk, self._cr = chunk[:-1], True
        if not chunk:
            return b""
        chunk = _crlf_lines(chunk)
        out = chunk.replace(b"\n.", b"\n..")
        if self._line_start and chunk[:1] == b".":
            out = b"." + out
        self._line_start = chunk[-1:] == b"\n"
        return out

    def end(self) -> bytes:
        """@return: the bytes that end DATA: the CRLF of a last line left
            open (or of a CR kept back), then "." CRLF."""
        if self._line_start and not self._cr:
            return b".\r\n"
        return b"\r\n.\r\n"


def _crlf_lines(data: bytes) -> bytes:
    """C{data} with every bare CR and bare LF made CRLF; C{data} itself when
    it has none (the usual case: three scans in C, no copy). A CR at the end
    of C{data} counts as bare."""
    pairs = data.count(b"\r\n")
    if data.count(b"\r") == pairs and data.count(b"\n") == pairs:
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


@implementer(interfaces.IPushProducer)
class SMTPConnection(protocol.Protocol):
    """One connection: replies in order, each with a deadline, and flow
    control for the body (the transport pauses us when its buffer is full).

    A deadline that passes, a malformed reply or a lost connection fails every
    pending and later call; the connection is then useless.
    """

    def __init__(self, clock, timeout: float):
        self.clock = clock
        self.timeout = timeout
        self._parser = ReplyParser()
        self._replies = deque()
        self._waiting = deque()
        self._paused = False  # the transport has no room for more
        self._drain_waiters = []
        self._failure = None
        self._timers = {}  # "reply" / "drain" -> DelayedCall
        self._closed = False
        self._close_waiters = []

    # -- protocol ---------------------------------------------------------------

    def connectionMade(self):
        self.transport.registerProducer(self, True)

    def dataReceived(self, data):
        try:
            self._replies.extend(self._parser.feed(data))
        except MalformedReply as e:
            self._fail(e)
            return
        self._deliver()

    def connectionLost(self, reason=protocol.connectionDone):
        if self._failure is None:
            self._failure = reason
        self._fail_waiters()
        self._closed = True
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(None)

    # -- the producer: the transport tells us when its buffer fills and drains

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._cancel_timer("drain")
        waiters, self._drain_waiters = self._drain_waiters, []
        for d in waiters:
            d.callback(None)

    def stopProducing(self):
        pass

    # -- the API ------------------------------------------------------------------

    def reply(self, what: str = "a reply") -> defer.Deferred:
        """The next reply, failing with L{SMTPTimeout} after C{timeout}.
        Cancelling it drops the connection (the dialogue is out of step)."""
        d = defer.Deferred(self._cancel_wait)
        if self._failure is not None:
            d.errback(self._failure)
            return d
        self._waiting.append((d, what))
        self._deliver()
        return d

    def command(self, line: bytes, what: str | None = None) -> defer.Deferred:
        """Send one command line (CRLF added) and wait for its reply."""
        self.write(line + b"\r\n")
        return self.reply(what or f"reply to {line.split(b' ', 1)[0].decode('ascii')}")

    def write(self, data: bytes) -> None:
        if self._failure is None and data:
            self.transport.write(data)

    def drained(self) -> defer.Deferred:
        """Fires when the transport takes more data (at once unless paused)."""
        if self._failure is not None:
            return defer.fail(self._failure)
        if not self._paused:
            return defer.succeed(None)
        d = defer.Deferred(self._cancel_wait)
        self._drain_waiters.append(d)
        self._arm("drain", "room to write the message")
        return d

    def abort(self, reason: Exception | None = None) -> None:
        """Drop the connection now (no QUIT)."""
        self._fail(reason or error.ConnectionAborted())

    def close(self) -> None:
        """Close politely after what has been written."""
        self.transport.loseConnection()

    def when_closed(self) -> defer.Deferred:
        """Fires (with None) once the connection is closed."""
        if self._closed:
            return defer.succeed(None)
        d = defer.Deferred()
        self._close_waiters.append(d)
        return d

    # -- internals ------------------------------------------------------------------

    def _deliver(self):
        while self._replies and self._waiting:
            d, _ = self._waiting.popleft()
            d.callback(self._replies.popleft())
        self._cancel_timer("reply")
        if self._waiting and self._failure is None:
            self._arm("reply", self._waiting[0][1])

    def _arm(self, kind: str, what: str):
        self._cancel_timer(kind)
        self._timers[kind] = self.clock.callLater(
            self.timeout, lambda: self._fail(SMTPTimeout(
                f"timeout: no {what} within {self.timeout:g} s")))

    def _cancel_timer(self, kind: str):
        timer = self._timers.pop(kind, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _cancel_wait(self, d):
        """A reply or room to write no longer awaited: out of the queues (a
        late reply must not fire it again), and the connection dropped."""
        self._waiting = deque(w for w in self._waiting if w[0] is not d)
        self._drain_waiters = [w for w in self._drain_waiters if w is not d]
        self._fail(defer.CancelledError())

    def _fail(self, reason):
        if self._failure is None:
            self._failure = Failure(reason)
        self._fail_waiters()
        if self.transport is not None and not self._closed:
            self.transport.abortConnection()

    def _fail_waiters(self):
        for kind in list(self._timers):
            self._cancel_timer(kind)
        while self._waiting:
            d, _ = self._waiting.popleft()
            d.errback(self._failure)
        waiters, self._drain_waiters = self._drain_waiters, []
        for d in waiters:
            d.errback(self._failure)
