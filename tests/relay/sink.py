"""A sink SMTP server for the relay's tests, on real loopback sockets.

It speaks just enough ESMTP (EHLO/HELO, STARTTLS, AUTH PLAIN/LOGIN, MAIL,
RCPT, DATA, RSET, NOOP, QUIT), written independently of the client under
test, and records everything: each connection's commands and whether it
was under TLS, each message's envelope, the bytes on the wire between DATA
and the final dot, and the message after un-dot-stuffing. Replies can be
scripted per recipient and per end of DATA; it can also go silent at a
chosen command or hang up after some messages.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field

from twisted.internet import defer, protocol, reactor, ssl

from mailgw.admin.devsetup import make_certificate

_CERTS = {}


def certificate(hostname: str = "localhost"):
    """C{(server options, trusted client certificate)} for a self-signed
    certificate of C{hostname}, made once per test run."""
    if hostname not in _CERTS:
        cert, key = make_certificate(hostname)
        _CERTS[hostname] = (ssl.PrivateCertificate.loadPEM(cert + key),
                            ssl.Certificate.loadPEM(cert))
    private, public = _CERTS[hostname]
    return private.options(), public


@dataclass
class Received:
    mail_from: str
    rcpts: list
    data: bytes      # after un-dot-stuffing, as the message was meant, less the signature
    wire: bytes      # exactly what came between DATA and the final dot
    connection: int  # index into the sink's connections
    reply: bytes = b""
    #: the DKIM-Signature header fields the relay prepended (with their CRLFs), or b""
    dkim_signature: bytes = b""

    @property
    def message(self) -> bytes:
        """The whole message as received: signature and C{data}."""
        return self.dkim_signature + self.data

    @property
    def accepted(self) -> bool:
        return self.reply.startswith(b"2")


@dataclass
class Connection:
    commands: list = field(default_factory=list)
    tls: bool = False
    user: str | None = None


def split_signature(data: bytes) -> tuple[bytes, bytes]:
    """C{(DKIM-Signature fields, rest)} of a message the relay signed (its
    first fields), else C{(b"", data)}: the rest is what the store held."""
    end = 0
    while data[end:end + 15].lower() == b"dkim-signature:":
        end = data.index(b"\r\n", end) + 2
        while data[end:end + 1] in (b" ", b"\t"):  # folded continuation lines
            end = data.index(b"\r\n", end) + 2
    return data[:end], data[end:]


def unstuff(wire: bytes) -> bytes:
    lines = wire.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


class SinkProtocol(protocol.Protocol):
    def connectionMade(self):
        self.sink = self.factory
        self.record = Connection()
        self.index = len(self.sink.connections)
        self.sink.connections.append(self.record)
        self.buffer = b""
        self.data = None  # a bytearray while DATA is being received
        self.login = None
        self.envelope = None
        self.messages = 0
        self.silent = self.sink.silent_at == b"GREETING"
        self.garbage = False
        self.closed = defer.Deferred()
        self.sink.live.add(self)
        self.reply(self.sink.greeting)
        self.sink.connected()

    def connectionLost(self, reason=None):
        self.sink.live.discard(self)
        self.closed.callback(None)

    def reply(self, line: bytes):
        if not self.silent:
            self.transport.write(line + b"\r\n")

    def dataReceived(self, data):
        if self.garbage:
            self.transport.write(b"this is not a TLS server hello\r\n" * 4)
            self.transport.loseConnection()
            return
        if self.data is not None:
            self.collect(data)
            return
        self.buffer += data
        while self.data is None and b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            self.command(line)
        if self.data is not None and self.buffer:
            rest, self.buffer = self.buffer, b""
            self.collect(rest)

    def collect(self, data):
        start = max(2, len(self.data) - 4)
        self.data += data
        end = self.data.find(b"\r\n.\r\n", start - 2)
        if end < 0:
            return
        wire = bytes(self.data[2:end + 2])
        rest = bytes(self.data[end + 5:])
        self.data = None
        self.end_of_data(wire)
        if rest:
            self.dataReceived(rest)

    def end_of_data(self, wire):
        reply = self.sink.data_replies.pop(0) if self.sink.data_replies else \
            b"250 2.0.0 Ok: queued"
        mail_from, rcpts = self.envelope
        signature, data = split_signature(unstuff(wire))
        message = Received(mail_from, rcpts, data, wire, self.index, reply, signature)
        self.envelope = None
        if self.sink.silent_at == b"END":
            self.silent = True
        self.reply(reply)
        self.sink.received(message)
        self.messages += 1
        if self.sink.hang_up_after and self.messages >= self.sink.hang_up_after:
            self.transport.loseConnection()

    def command(self, line: bytes):
        self.record.commands.append(line)
        self.sink.heard(line)
        if self.login is not None:
            return self.login(line)
        verb = line.split(b" ", 1)[0].upper()
        if verb == self.sink.silent_at:
            self.silent = True
        handler = getattr(self, "do_" + verb.decode("ascii", "replace"), None)
        if handler is None:
            return self.reply(b"502 5.5.2 command not recognized")
        handler(line[len(verb) + 1:])

    def do_EHLO(self, arg):
        if self.sink.refuse_ehlo:
            return self.reply(b"502 5.5.2 EHLO not implemented")
        extensions = list(self.sink.extensions)
        if self.sink.tls_options is not None and not self.record.tls:
            extensions.append(b"STARTTLS")
        if self.sink.users:
            extensions.append(b"AUTH " + self.sink.auth_mechanisms)
        lines = [b"sink.test"] + extensions
        self.transport.write(b"".join(b"250-" + x + b"\r\n" for x in lines[:-1])
                             + b"250 " + lines[-1] + b"\r\n")

    def do_HELO(self, arg):
        self.reply(b"250 sink.test")

    def do_STARTTLS(self, arg):
        self.reply(b"220 2.0.0 ready to start TLS")
        if self.sink.broken_tls:  # says yes, then answers the hello with no TLS at all
            self.garbage = True
            return
        self.transport.startTLS(self.sink.tls_options)
        self.record.tls = True

    def do_AUTH(self, arg):
        parts = arg.split()
        mechanism = parts[0].upper()
        if mechanism == b"PLAIN" and len(parts) == 2:
            _, user, password = base64.b64decode(parts[1]).split(b"\0")
            return self.check(user, password)
        if mechanism == b"LOGIN":
            answers = []

            def step(line):
                answers.append(base64.b64decode(line))
                if len(answers) == 1:
                    return self.reply(b"334 UGFzc3dvcmQ6")
                self.login = None
                self.check(*answers)
            self.login = step
            return self.reply(b"334 VXNlcm5hbWU6")
        self.reply(b"504 5.5.4 unrecognized authentication type")

    def check(self, user, password):
        if self.sink.users.get(user.decode()) == password.decode():
            self.record.user = user.decode()
            return self.reply(b"235 2.7.0 Authentication successful")
        self.reply(b"535 5.7.8 Error: authentication failed")

    def do_MAIL(self, arg):
        if self.sink.users and self.record.user is None:
            return self.reply(b"530 5.7.0 Authentication required")
        self.envelope = (arg.split(b"<", 1)[1].split(b">", 1)[0].decode(), [])
        self.reply(self.sink.mail_reply)

    def do_RCPT(self, arg):
        rcpt = arg.split(b"<", 1)[1].split(b">", 1)[0].decode()
        reply = self.sink.rcpt_replies.get(rcpt, b"250 2.1.5 Ok")
        if reply.startswith(b"2"):
            self.envelope[1].append(rcpt)
        self.reply(reply)

    def do_DATA(self, arg):
        if not self.envelope or not self.envelope[1]:
            return self.reply(b"554 5.5.1 no valid recipients")
        self.data = bytearray(b"\r\n")
        self.reply(b"354 End data with <CR><LF>.<CR><LF>")

    def do_RSET(self, arg):
        self.envelope = None
        self.reply(b"250 2.0.0 Ok")

    def do_NOOP(self, arg):
        self.reply(b"250 2.0.0 Ok")

    def do_QUIT(self, arg):
        self.reply(b"221 2.0.0 Bye")
        self.transport.loseConnection()


class Sink(protocol.ServerFactory):
    protocol = SinkProtocol

    def __init__(self, tls_options=None, users=None):
        self.tls_options = tls_options
        self.users = users or {}
        self.auth_mechanisms = b"PLAIN LOGIN"
        self.greeting = b"220 sink.test ESMTP"
        self.extensions = [b"SIZE 104857600", b"8BITMIME", b"SMTPUTF8"]
        self.refuse_ehlo = False
        self.broken_tls = False
        self.mail_reply = b"250 2.1.0 Ok"
        self.rcpt_replies = {}
        self.data_replies = []
        #: stop answering at b"GREETING" (say nothing at all), b"DATA", b"END" (the
        #: final dot), or any other verb
        self.silent_at = None
        self.hang_up_after = 0
        self.connections = []
        self.live = set()
        self.messages = []
        self._waiters = []
        self._command_waiters = {}
        self._connection_waiters = []

    def received(self, message):
        self.messages.append(message)
        waiters, self._waiters = self._waiters, []
        for count, d in waiters:
            if len(self.messages) >= count:
                d.callback(self.messages)
            else:
                self._waiters.append((count, d))

    def heard(self, line: bytes):
        verb = line.split(b" ", 1)[0].upper()
        for d in self._command_waiters.pop(verb, []):
            d.callback(line)

    def connected(self):
        waiters, self._connection_waiters = self._connection_waiters, []
        for d in waiters:
            d.callback(None)

    def wait_for_connection(self):
        """Fires once the next connection has been accepted."""
        d = defer.Deferred()
        self._connection_waiters.append(d)
        return d

    def wait_for_command(self, verb: bytes):
        """Fires with the next command line of C{verb} the sink receives."""
        d = defer.Deferred()
        self._command_waiters.setdefault(verb, []).append(d)
        return d

    def wait_for(self, count: int):
        """Fires with the messages once C{count} have arrived."""
        if len(self.messages) >= count:
            return defer.succeed(self.messages)
        d = defer.Deferred()
        self._waiters.append((count, d))
        return d

    @property
    def accepted(self):
        return [m for m in self.messages if m.accepted]

    def listen(self, testcase, interface="127.0.0.1", implicit_tls=None) -> int:
        """Listen on a free loopback port for the test's duration; the port."""
        factory = self
        if implicit_tls is not None:
            from twisted.protocols.tls import TLSMemoryBIOFactory
            factory = TLSMemoryBIOFactory(implicit_tls, False, self)
        port = reactor.listenTCP(0, factory, interface=interface)
        testcase.addCleanup(port.stopListening)
        testcase.addCleanup(self.disconnect_all)
        return port.getHost().port

    def disconnect_all(self):
        """Drop every open connection; fires once they are all closed."""
        live = list(self.live)
        for p in live:
            p.transport.abortConnection()
        return defer.DeferredList([p.closed for p in live])


def text_body(size: int, seed: int = 0) -> bytes:
    """A CRLF message body of about C{size} bytes whose lines often start
    with dots (and some are a lone dot), for byte-exact comparisons."""
    import random
    rand = random.Random(seed)
    lines, total = [], 0
    while total < size:
        kind = rand.random()
        if kind < 0.1:
            line = b"."
        elif kind < 0.3:
            line = b"." * rand.randint(1, 3) + rand.randbytes(rand.randint(0, 60)).hex().encode()
        else:
            line = rand.randbytes(rand.randint(0, 200)).hex().encode()
        lines.append(line)
        total += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"
