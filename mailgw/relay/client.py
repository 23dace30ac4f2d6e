"""Our SMTP client: one session over one L{SMTPConnection}.

The session owns the dialogue: the greeting, EHLO (HELO when EHLO is
refused), STARTTLS (required for a smarthost in C{starttls} mode,
opportunistic for MX hosts), AUTH PLAIN or LOGIN, then any number of
transactions (MAIL, RCPT, DATA with the body streamed and dot-stuffed; RSET
before each one after the first), and QUIT.

A transaction answers per recipient with the server's L{Reply}; anything that
breaks the connection (timeouts, TLS, a dropped line, a refused greeting or
EHLO or AUTH) is a L{DeliveryError} that concerns every message of it. No
secret ever appears in an error's text.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, error, protocol

from mailgw.relay.errors import DeliveryError, temporary
from mailgw.relay.wire import DotStuffer, MalformedReply, Reply, SMTPConnection, SMTPTimeout

#: how the session treats TLS: "none", "starttls" (required), "opportunistic"
#: (STARTTLS when offered, plain text otherwise), "implicit" (the endpoint
#: already wraps the connection in TLS)
TLS_MODES = ("none", "starttls", "opportunistic", "implicit")


@dataclass(frozen=True)
class ClientSettings:
    helo_name: str
    tls: str = "none"
    #: the IOpenSSLClientConnectionCreator STARTTLS uses
    tls_options: object = field(default=None, repr=False)
    username: str = ""
    password: str = field(default="", repr=False)
    #: seconds to wait for each reply (and for room to write the body)
    timeout: float = 300.0


class BytesBody:
    """A body held in memory, handed out in chunks of C{chunk_size}."""

    def __init__(self, data: bytes, chunk_size: int = 64 * 1024):
        self._data, self._size, self._offset = data, chunk_size, 0

    def next_chunk(self):
        if self._offset >= len(self._data):
            return defer.succeed(None)
        chunk = self._data[self._offset:self._offset + self._size]
        self._offset += len(chunk)
        return defer.succeed(chunk)


def describe(reason, host: str | None = None) -> DeliveryError:
    """A failure (of any layer) as the L{DeliveryError} to record."""
    e = getattr(reason, "value", reason)
    if isinstance(e, DeliveryError):
        if e.host is None:
            e.host = host
        return e
    if isinstance(e, (SMTPTimeout, MalformedReply)):
        text = str(e)
    elif isinstance(e, SSL.Error):
        text = f"TLS failed: {_ssl_text(e)}"
    elif isinstance(e, VerificationError):
        text = "TLS failed: the certificate does not name the host"
    elif isinstance(e, error.ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(e, (error.TimeoutError, error.TCPTimedOutError)):
        text = "connection timed out"
    elif isinstance(e, error.DNSLookupError):
        text = "host name not found"
    elif isinstance(e, error.ConnectionDone):
        text = "connection closed by the server"
    elif isinstance(e, (error.ConnectionLost, error.ConnectionAborted)):
        text = "connection lost"
    else:
        text = f"{type(e).__name__}: {e}"
    return temporary(text, host)


def _ssl_text(e: SSL.Error) -> str:
    try:
        return "; ".join(str(part[2]) for part in e.args[0]) or "handshake failed"
    except (IndexError, TypeError):
        return str(e) or "handshake failed"


def _needs_smtputf8(*addresses: str) -> bool:
    return any(not a.isascii() for a in addresses)


class SMTPSession:
    """The dialogue over one connection to C{host} (a label for records)."""

    def __init__(self, connection: SMTPConnection, settings: ClientSettings, host: str):
        self.connection = connection
        self.settings = settings
        self.host = host
        self.extensions: dict[str, str] = {}
        self.secure = settings.tls == "implicit"
        self.transactions = 0

    def _refused(self, step: str, reply: Reply) -> DeliveryError:
        return DeliveryError(f"{step} refused: {reply.text}", reply.code, False, self.host)

    # -- opening --------------------------------------------------------------------

    @defer.inlineCallbacks
    def open(self):
        """Greeting, EHLO, STARTTLS and AUTH as the settings say."""
        greeting = yield self.connection.reply("greeting")
        if greeting.code != 220:
            raise self._refused("greeting", greeting)
        yield self._hello()
        if self.settings.tls in ("starttls", "opportunistic"):
            yield self._starttls()
        if self.settings.username:
            yield self._authenticate()
        return self

    @defer.inlineCallbacks
    def _hello(self):
        name = self.settings.helo_name.encode("ascii")
        reply = yield self.connection.command(b"EHLO " + name)
        if reply.code == 250:
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.partition(" ")
                self.extensions[keyword.upper()] = params
            return
        if not reply.permanent:
            raise self._refused("EHLO", reply)
        reply = yield self.connection.command(b"HELO " + name)
        if reply.code != 250:
            raise self._refused("HELO", reply)
        self.extensions = {}

    @defer.inlineCallbacks
    def _starttls(self):
        required = self.settings.tls == "starttls"
        if "STARTTLS" not in self.extensions:
            if required:
                raise temporary("the server does not offer STARTTLS", self.host)
            return
        reply = yield self.connection.command(b"STARTTLS")
        if reply.code != 220:
            if required:
                raise self._refused("STARTTLS", reply)
            return  # opportunistic: carry on in plain text
        self.connection.transport.startTLS(self.settings.tls_options)
        self.secure = True
        yield self._hello()  # the handshake runs as this is written

    @defer.inlineCallbacks
    def _authenticate(self):
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        user = self.settings.username.encode("utf-8")
        password = self.settings.password.encode("utf-8")
        command = self.connection.command
        if "PLAIN" in mechanisms:
            reply = yield command(b"AUTH PLAIN " + base64.b64encode(
                b"\0" + user + b"\0" + password), "reply to AUTH PLAIN")
        elif "LOGIN" in mechanisms:
            reply = yield command(b"AUTH LOGIN")
            if reply.code == 334:
                reply = yield command(base64.b64encode(user), "reply to the user name")
            if reply.code == 334:
                reply = yield command(base64.b64encode(password), "reply to the password")
        else:
            raise temporary("the server offers neither AUTH PLAIN nor AUTH LOGIN", self.host)
        if reply.code != 235:
            raise self._refused("AUTH", reply)

    # -- transactions ------------------------------------------------------------------

    def _mail_command(self, mail_from: str, size: int, utf8: bool) -> bytes:
        line = b"MAIL FROM:<" + mail_from.encode("utf-8") + b">"
        if "SIZE" in self.extensions:
            line += b" SIZE=%d" % size
        if "8BITMIME" in self.extensions:
            line += b" BODY=8BITMIME"
        if utf8:
            line += b" SMTPUTF8"
        return line

    def send(self, mail_from: str, recipients, body, size: int):
        """One transaction: C{body} (with C{next_chunk()} Deferreds of bytes,
        C{None} at the end) to C{recipients}.

        @return: Deferred firing with C{{recipient: Reply}} (the RCPT refusal,
            or the final reply to DATA); failing with L{DeliveryError} when
            the connection broke.
        """
        d = self._send(mail_from, recipients, body, size)

        def broke(reason):
            raise describe(reason, self.host)
        return d.addErrback(broke)

    @defer.inlineCallbacks
    def _send(self, mail_from: str, recipients, body, size: int):
        if self.transactions:
            reply = yield self.connection.command(b"RSET")
            if reply.code != 250:
                raise self._refused("RSET", reply)
        self.transactions += 1
        utf8 = _needs_smtputf8(mail_from, *recipients)
        if utf8 and "SMTPUTF8" not in self.extensions:
            refusal = Reply(553, ("5.6.7 the receiving server does not support SMTPUTF8 "
                                  "(an address is not ASCII)",))
            return dict.fromkeys(recipients, refusal)
        reply = yield self.connection.command(self._mail_command(mail_from, size, utf8))
        if reply.code != 250:
            return dict.fromkeys(recipients, reply)
        results, accepted = {}, []
        for rcpt in recipients:
            reply = yield self.connection.command(b"RCPT TO:<" + rcpt.encode("utf-8") + b">")
            if reply.code in (250, 251):
                accepted.append(rcpt)
            else:
                results[rcpt] = reply
        if accepted:
            reply = yield self._data(body)
            results.update(dict.fromkeys(accepted, reply))
        return results

    @defer.inlineCallbacks
    def _data(self, body):
        reply = yield self.connection.command(b"DATA")
        if reply.code != 354:
            return reply
        stuffer = DotStuffer()
        while True:
            try:
                chunk = yield body.next_chunk()
            except Exception as e:
                # Never send the final dot of a body we could not read whole.
                self.connection.abort()
                raise temporary(f"could not read the message body: {e}", self.host) from e
            if chunk is None:
                break
            self.connection.write(stuffer.feed(chunk))
            yield self.connection.drained()
        self.connection.write(stuffer.end())
        return (yield self.connection.reply("reply to the end of DATA"))

    def quit(self) -> None:
        """Say QUIT and close once it is written (the reply is not awaited)."""
        self.connection.write(b"QUIT\r\n")
        self.connection.close()


def connect(endpoint, clock, settings: ClientSettings, host: str):
    """Connect through C{endpoint} and open a session (greeting, EHLO, TLS,
    AUTH). @return: Deferred firing with the L{SMTPSession}, or failing with
    a L{DeliveryError} (the connection then closed)."""
    factory = protocol.Factory()
    factory.protocol = lambda: SMTPConnection(clock, settings.timeout)
    d = endpoint.connect(factory)

    def connected(connection):
        session = SMTPSession(connection, settings, host)

        def failed(reason):
            connection.abort()
            return connection.when_closed().addCallback(lambda _: reason)
        return session.open().addErrback(failed)

    d.addCallback(connected)

    def translate(reason):
        raise describe(reason, host)
    return d.addErrback(translate)
