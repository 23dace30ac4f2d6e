"""The load generator: SMTP submission clients on asyncio (uvloop when
installed) + ssl: L{run_messages} drives each connection from one protocol
object; the stream client L{Client} serves the single large message and the
idle connections.

Every client does what a real submission client does: greeting, EHLO,
STARTTLS, EHLO again, AUTH PLAIN (initial response), then per message
MAIL FROM, RCPT TO, DATA and the body, each command waiting for its reply
(no pipelining: aiosmtpd does not offer it, and lock-step is the common
client). The latency measured is that of the final-dot reply: from the moment
the last byte of the message (the ".") was handed to the transport to the
moment its "250" was read (by L{run_messages}: as the reply's bytes arrive,
not when a coroutine waiting for them runs again; rows measured before the
protocol client had the generator's own scheduling in them).

Everything is bounded: in messages (a shared budget), in time (a deadline),
and each reply by a timeout; nothing retries forever.
"""
from __future__ import annotations

import asyncio
import base64
import os
import ssl
import time
from dataclasses import dataclass, field

try:
    import uvloop
except ImportError:  # the stock loop: correct, only slower (bench/RESULTS.md)
    uvloop = None

REPLY_TIMEOUT = 60.0
CONNECT_TIMEOUT = 30.0
SENDER = "bench@bench.example"
RECIPIENT = "rcpt@dest.example"
LINE = 76


class SMTPError(Exception):
    """An unexpected reply (or none)."""


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    key: str
    tls: ssl.SSLContext


def client_tls_context() -> ssl.SSLContext:
    """TLS as a submission client on loopback would do it to a self-signed
    server: a client context without verification.

    It loads no CA certificates: with verification off, OpenSSL still builds
    the server's chain against whatever store the context holds, and with
    the system's store that was a third of the generator's handshake cost,
    spent on a result nobody reads."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def loop_name() -> str:
    """The event loop L{run} drives the clients on."""
    if uvloop is None or os.environ.get("BENCH_LOOP") == "asyncio":
        return "asyncio"
    return f"uvloop {uvloop.__version__}"


def run(coroutine):
    """Run C{coroutine} to its end on a new loop: uvloop's when it is
    installed (the C{bench} extra), unless C{BENCH_LOOP=asyncio}.

    The generator shares the machine with the server it measures; on
    asyncio's own loop (with its TLS in Python) it needed 0.9 ms of CPU per
    connection in (b), on uvloop 0.7 ms, leaving more of the two cores to
    the server, whichever server it is."""
    if loop_name() == "asyncio":
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# -- messages -------------------------------------------------------------------

def _header(index: int) -> bytes:
    return (f"From: Bench <{SENDER}>\r\nTo: <{RECIPIENT}>\r\n"
            f"Subject: bench message {index}\r\n"
            f"Message-ID: <bench-{index}@bench.example>\r\n\r\n").encode("ascii")


def _lines(count: int) -> bytes:
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    lines = []
    for i in range(count):
        rot = i % len(alphabet)
        text = (alphabet[rot:] + alphabet[:rot]) * 2
        lines.append(text[:LINE - 2] + b"\r\n")
    return b"".join(lines)


def make_message(size: int, index: int = 0) -> bytes:
    """About C{size} bytes of message, with the final dot, no line starting
    with a dot (no stuffing needed)."""
    header = _header(index)
    count = max(1, (size - len(header)) // LINE)
    return header + _lines(count) + b".\r\n"


def message_chunks(size: int, chunk: int = 256 * 1024):
    """A large message as chunks (the last one ends with the final dot)."""
    yield _header(0)
    block = _lines(chunk // LINE)
    sent = 0
    while sent + len(block) < size:
        yield block
        sent += len(block)
    rest = max(1, (size - sent) // LINE)
    yield _lines(rest) + b".\r\n"


# -- one client -------------------------------------------------------------------

class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    async def reply(self, timeout: float = REPLY_TIMEOUT) -> tuple[int, str]:
        lines = []
        # One timer for the whole reply; asyncio.wait_for would run each
        # read as a task of its own (Python 3.11), which cost the generator
        # more CPU than some servers spend on the command.
        async with asyncio.timeout(timeout):
            while True:
                line = await self.reader.readuntil(b"\r\n")
                lines.append(line)
                if len(line) < 4 or line[3:4] != b"-":
                    break
        last = lines[-1].decode("utf-8", "replace").rstrip("\r\n")
        try:
            return int(last[:3]), last[4:]
        except ValueError:
            raise SMTPError(f"bad reply {last!r}") from None

    async def expect(self, code: int, what: str, timeout: float = REPLY_TIMEOUT) -> str:
        got, text = await self.reply(timeout)
        if got != code:
            raise SMTPError(f"{what}: {got} {text}")
        return text

    async def command(self, line: bytes, code: int) -> str:
        self.writer.write(line + b"\r\n")
        return await self.expect(code, line.split(b" ", 1)[0].decode("ascii", "replace"))

    async def send(self, message: bytes) -> float:
        """One transaction; the final-dot reply's latency in seconds."""
        await self.command(b"MAIL FROM:<" + SENDER.encode() + b">", 250)
        await self.command(b"RCPT TO:<" + RECIPIENT.encode() + b">", 250)
        await self.command(b"DATA", 354)
        self.writer.write(message)
        start = time.perf_counter()
        await self.writer.drain()
        await self.expect(250, "final dot")
        return time.perf_counter() - start

    async def send_chunks(self, chunks) -> float:
        await self.command(b"MAIL FROM:<" + SENDER.encode() + b">", 250)
        await self.command(b"RCPT TO:<" + RECIPIENT.encode() + b">", 250)
        await self.command(b"DATA", 354)
        for chunk in chunks:
            self.writer.write(chunk)
            await self.writer.drain()
        start = time.perf_counter()
        await self.expect(250, "final dot", timeout=300)
        return time.perf_counter() - start

    async def quit(self) -> None:
        try:
            await self.command(b"QUIT", 221)
        finally:
            self.abort()

    def abort(self) -> None:
        transport = self.writer.transport
        if transport is not None and not transport.is_closing():
            transport.abort()


async def connect(target: Target, *, tls: bool = True, auth: bool = True) -> Client:
    """A client past the greeting and EHLO; with C{tls} past STARTTLS and
    EHLO again; with C{auth} also past AUTH PLAIN."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(target.host, target.port), CONNECT_TIMEOUT)
    client = Client(reader, writer)
    try:
        await client.expect(220, "greeting")
        await client.command(b"EHLO bench.client.test", 250)
        if tls:
            await client.command(b"STARTTLS", 220)
            await asyncio.wait_for(writer.start_tls(target.tls), CONNECT_TIMEOUT)
            await client.command(b"EHLO bench.client.test", 250)
            if auth:
                token = base64.b64encode(b"\0bench\0" + target.key.encode())
                await client.command(b"AUTH PLAIN " + token, 235)
    except BaseException:
        client.abort()
        raise
    return client


# -- results ------------------------------------------------------------------------

FAILURES = (SMTPError, OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
            asyncio.LimitOverrunError, ssl.SSLError, EOFError)


@dataclass
class Result:
    messages: int = 0
    errors: int = 0
    connections: int = 0
    wall: float = 0.0
    latencies: list = field(default_factory=list)
    error_samples: list = field(default_factory=list)
    #: with numbered messages: Subject -> when its 250 arrived (perf_counter)
    accepted: dict = field(default_factory=dict)

    def failed(self, error: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{type(error).__name__}: {error}")

    @property
    def rate(self) -> float:
        return self.messages / self.wall if self.wall > 0 else 0.0

    def percentile(self, p: float) -> float | None:
        """Nearest-rank percentile of the latencies, in milliseconds."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
        return ordered[rank - 1] * 1000.0


class Budget:
    def __init__(self, messages: int, seconds: float):
        self.left = messages
        self.deadline = time.monotonic() + seconds

    def open(self) -> bool:
        return self.left > 0 and time.monotonic() < self.deadline

    def take(self) -> bool:
        if not self.open():
            return False
        self.left -= 1
        return True


# -- scenarios -------------------------------------------------------------------------

def numbered(message: bytes):
    """For L{run_messages}: C{message} (from L{make_message}) with a Subject
    and a Message-ID of its own for each send, so that a receiver can tell
    which one arrived."""
    body = message.split(b"\r\n\r\n", 1)[1]

    def make(index: int) -> tuple[bytes, bytes]:
        header = _header(index)
        return header + body, header.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]
    return make


class _Session(asyncio.Protocol):
    """One connection of L{run_messages}, driven by callbacks: greeting,
    EHLO, STARTTLS, EHLO, AUTH PLAIN, then C{per_connection} transactions
    (while the budget lasts) and QUIT, each command in lock-step with its
    reply, as L{connect} and L{Client.send} do.

    It does the same exchange as the stream client with a fraction of the
    generator's CPU (no task, stream read or timer per reply): in (b) the
    stream client was the slowest party, and every server measured its
    rate. A reply that does not come within C{REPLY_TIMEOUT} is caught by
    L{run_messages}'s watchdog (L{stale})."""

    def __init__(self, run: _Run):
        self.run = run
        self.loop = run.loop
        self.transport = None
        self.buffer = b""
        self.expected = 220
        self.what = "greeting"
        self.step = self._greeted
        self.sent = 0
        self.subject = None
        self.started = 0.0
        self.since = self.loop.time()
        self.done = self.loop.create_future()

    # -- asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes):
        buffer = self.buffer + data if self.buffer else data
        while True:
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            line, buffer = buffer[:end], buffer[end + 2:]
            if line[3:4] == b"-":
                continue
            self.buffer = buffer
            self._reply(line)
            if self.done.done():
                return
            buffer = self.buffer
        self.buffer = buffer

    def connection_lost(self, exc):
        self.end(exc or EOFError("connection closed by the server"))

    # -- the exchange

    def stale(self, now: float) -> bool:
        return not self.done.done() and now - self.since > REPLY_TIMEOUT

    def _reply(self, line: bytes) -> None:
        try:
            code = int(line[:3])
        except ValueError:
            self.end(SMTPError(f"bad reply {line!r}"))
            return
        if code != self.expected or self.step is None:  # None: during STARTTLS
            self.end(SMTPError(f"{self.what}: {line.decode('utf-8', 'replace')}"))
            return
        self.step()

    def _command(self, line: bytes, code: int, step) -> None:
        self.expected, self.what, self.step = code, line.split(b" ", 1)[0].decode(), step
        self.since = self.loop.time()
        self.transport.write(line + b"\r\n")

    def _greeted(self):
        self._command(b"EHLO bench.client.test", 250, self._ehlo)

    def _ehlo(self):
        self._command(b"STARTTLS", 220, self._starttls)

    def _starttls(self):
        self.step = None
        task = asyncio.ensure_future(self._secure())
        self.run.tasks.add(task)
        task.add_done_callback(self.run.tasks.discard)

    async def _secure(self):
        if self.done.done() or self.transport.is_closing():
            return
        try:
            transport = await self.loop.start_tls(
                self.transport, self, self.run.target.tls,
                ssl_handshake_timeout=CONNECT_TIMEOUT)
        except Exception as e:  # anything but FAILURES is re-raised by _Run.session
            self.end(e)
            return
        if self.done.done():
            transport.abort()
            return
        self.transport = transport
        self._command(b"EHLO bench.client.test", 250, self._ehlo_secured)

    def _ehlo_secured(self):
        token = base64.b64encode(b"\0bench\0" + self.run.target.key.encode())
        self._command(b"AUTH PLAIN " + token, 235, self._authenticated)

    def _authenticated(self):
        self.run.result.connections += 1
        self._next()

    def _next(self):
        if self.sent < self.run.per_connection and self.run.budget.take():
            self._command(self.run.mail_from, 250, self._mail)
        else:
            self._command(b"QUIT", 221, self._quit)

    def _mail(self):
        self._command(self.run.rcpt_to, 250, self._rcpt)

    def _rcpt(self):
        self._command(b"DATA", 354, self._data)

    def _data(self):
        data, self.subject = self.run.next_message()
        self.expected, self.what, self.step = 250, "final dot", self._accepted
        self.since = self.loop.time()
        self.transport.write(data)
        self.started = time.perf_counter()

    def _accepted(self):
        now = time.perf_counter()
        result = self.run.result
        result.latencies.append(now - self.started)
        if self.subject is not None:
            result.accepted[self.subject] = now
        result.messages += 1
        self.sent += 1
        self._next()

    def _quit(self):
        self.end(None)

    def end(self, error) -> None:
        """Finish with C{error} (C{None}: QUIT answered); drop the connection."""
        if not self.done.done():  # (cancelled: the run was, and the connection goes too)
            self.done.set_result(error)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


class _Run:
    """What the clients of one L{run_messages} share."""

    def __init__(self, target: Target, per_connection: int, message, budget: Budget):
        self.loop = asyncio.get_running_loop()
        self.target = target
        self.per_connection = per_connection
        self.budget = budget
        self.result = Result()
        self.mail_from = b"MAIL FROM:<" + SENDER.encode() + b">"
        self.rcpt_to = b"RCPT TO:<" + RECIPIENT.encode() + b">"
        self.sessions = set()
        self.tasks = set()  # the STARTTLS handshakes under way
        if callable(message):
            counter = iter(range(1 << 62))
            self.next_message = lambda: message(next(counter))
        else:
            self.next_message = lambda: (message, None)

    async def session(self) -> None:
        session = _Session(self)
        self.sessions.add(session)
        try:
            try:
                await asyncio.wait_for(self.loop.create_connection(
                    lambda: session, self.target.host, self.target.port), CONNECT_TIMEOUT)
            except FAILURES as e:
                session.end(e)
            error = await session.done
        finally:
            self.sessions.discard(session)
            session.end(asyncio.CancelledError())  # no-op unless cancelled: drop the connection
        if error is not None:
            if not isinstance(error, FAILURES):
                raise error  # a bug of ours, not the server's failure
            self.result.failed(error)
            await asyncio.sleep(0.05)

    async def watchdog(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, REPLY_TIMEOUT / 4))
            now = self.loop.time()
            for session in list(self.sessions):
                if session.stale(now):
                    session.end(TimeoutError(f"{session.what}: no reply"))


async def run_messages(target: Target, *, clients: int, per_connection: int,
                       message, max_messages: int, max_seconds: float) -> Result:
    """C{clients} concurrent clients, each sending C{per_connection} messages
    per connection and then reconnecting, until the budget is spent.

    @param message: the bytes every send sends; or L{numbered}'s function,
        and then the result's C{accepted} notes when each was accepted.
    """
    run = _Run(target, per_connection, message, Budget(max_messages, max_seconds))
    result = run.result

    async def worker():
        while run.budget.open() and result.errors < 1000:
            await run.session()

    watchdog = asyncio.ensure_future(run.watchdog())
    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(clients)))
    finally:
        watchdog.cancel()
        await asyncio.gather(watchdog, *run.tasks, return_exceptions=True)
    result.wall = time.perf_counter() - start
    return result


async def run_large(target: Target, size: int) -> Result:
    """One connection, one message of C{size} bytes, streamed in chunks."""
    result = Result()
    start = time.perf_counter()
    client = None
    try:
        client = await connect(target)
        result.connections = 1
        result.latencies.append(await client.send_chunks(message_chunks(size)))
        result.messages = 1
        await client.quit()
    except FAILURES as e:
        result.failed(e)
        if client is not None:
            client.abort()
    result.wall = time.perf_counter() - start
    return result


async def open_idle(target: Target, count: int, *, tls: bool = False,
                    concurrency: int = 50, max_seconds: float = 120.0):
    """C{count} connections left idle (past EHLO; with C{tls} past STARTTLS and
    AUTH too). Returns C{(clients, Result)}; close them with L{close_all}."""
    result = Result()
    clients = []
    semaphore = asyncio.Semaphore(concurrency)
    deadline = time.monotonic() + max_seconds

    async def one():
        async with semaphore:
            if time.monotonic() > deadline or result.errors >= 100:
                return
            try:
                clients.append(await connect(target, tls=tls, auth=tls))
                result.connections += 1
            except FAILURES as e:
                result.failed(e)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    result.wall = time.perf_counter() - start
    return clients, result


async def close_all(clients) -> None:
    for client in clients:
        client.abort()
    await asyncio.sleep(0)
