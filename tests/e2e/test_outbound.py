"""End to end: no message the gateway accepts can smuggle a second SMTP
transaction past it to the next hop (outbound SMTP smuggling).

The attack: an authenticated client puts an end-of-data lookalike (a bare
CR or bare LF where RFC 5321 §4.1.4 wants CRLF "." CRLF) into a message,
followed by a whole second transaction in someone else's name. Our own
DATA decoder does not take the lookalike for the end, so the message is
accepted whole; but if the relay wrote it to the smarthost as it came, a
lenient next hop that does take it for the end would read the rest as
commands and deliver "From: ceo@foreign.test" to victim@dest.test with
our reputation. RFC 5321 §2.3.8 allows no line end but CRLF; the relay must
therefore send only CRLF lines, dot-stuffed.

Here the real ``twistd -n mailgw`` runs with the relay on and the HTTP
API enabled; its smarthost is the sink SMTP server of L{tests.relay.sink}
(in the test's own reactor, tls "none"). Each lookalike is submitted once
over SMTP (the DATA bytes written raw, exactly as given, after AUTH PLAIN
with an smtp credential) and once through C{/api/v1/send/raw}. At the
sink, each accepted submission must arrive as exactly one message, to the
one recipient it was submitted for, with the smuggled lines as body text;
the DATA on the sink's wire must hold only CRLF-terminated lines, every one
that starts with a dot stuffed; and no smuggled MAIL or RCPT may reach the
sink as a command. A lookalike with a NUL byte is refused by design (a NUL
is not allowed in a message), so nothing of it may arrive.

Every wait is bounded and event-driven: the relay ends each delivery with
QUIT, and the sink handles what a connection sends in order, so once it has
heard QUIT it has seen every byte the relay wrote before. Nothing sleeps a
fixed time.

One gateway (and its SQLite database) serves every test of the module; it
is stopped after the last one (or when the test process exits, if only
some tests were selected). The sink is new for each test, but listens on
one socket that stays open for the module, so the gateway's configured
smarthost port never changes. No outside tool is needed: the clients are
smtplib and urllib.
"""
from __future__ import annotations

import atexit
import base64
import json
import os
import re
import smtplib
import socket
import urllib.error
import urllib.request

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from mailgw.store import open_store
from tests.e2e.gateway import Gateway, mailgw_cli, write_config
from tests.relay.sink import Sink

#: how long a test waits for the gateway's relay (or its start)
SETTLE_TIMEOUT = 30.0
SMTP_KEY = "OutboundSmtpKey000000001"
API_KEY = "OutboundApiKey0000000001"
SENDER = "a@good.example"
RECIPIENT = "user@dest.example"
QUEUED = re.compile(r"^OK: queued as ([A-Z0-9]{12})$")

HEAD = (b"From: a@good.example\r\nSubject: n\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
        b"Message-ID: <n@good.example>\r\n\r\n")
#: what a lenient next hop would read as a second transaction
SMUGGLED = (b"MAIL FROM:<x@foreign.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\n"
            b"From: ceo@foreign.test\r\n\r\nsmuggled\r\n")

#: C{(name, lookalike, the line the gateway keeps between "hello" and the
#: smuggled lines when the message came over SMTP)}. Through the API the
#: line is always ".": its data is the message itself, not dot-stuffed. Over
#: SMTP the DATA bytes are sent unstuffed, as an attacker would: a dot that
#: starts a line after a CRLF is taken for a stuffed one and removed
#: (RFC 5321 §4.5.2), unless a bare LF follows it; a dot after a bare CR or
#: a bare LF is kept.
LOOKALIKES = [
    ("cr_dot_cr", b"\r.\r", b"."),
    ("cr_dot_lf", b"\r.\n", b"."),
    ("lf_dot_cr", b"\n.\r", b"."),
    ("lf_dot_lf", b"\n.\n", b"."),
    ("crlf_dot_lf", b"\r\n.\n", b"."),
    ("lf_dot_crlf", b"\n.\r\n", b"."),
    ("cr_dot_crlf", b"\r.\r\n", b"."),
    ("crlf_dot_cr", b"\r\n.\r", b""),
]
#: a message with nothing to smuggle
CLEAN = HEAD + b"clean\r\n"
#: lookalikes with a NUL byte: refused over both protocols
NUL_LOOKALIKES = [
    ("crlf_nul_dot_crlf", b"\r\n\x00.\r\n"),
    ("crlf_dot_nul_crlf", b"\r\n.\x00\r\n"),
]
#: the real end of data (RFC 5321 §4.1.4), which only the API can carry
#: inside a message
END_OF_DATA = b"\r\n.\r\n"


def message(lookalike: bytes) -> bytes:
    """The attacker's message: own verified From domain, then C{lookalike}
    and a second transaction in a foreign name."""
    return HEAD + b"hello" + lookalike + SMUGGLED


def relayed(middle: bytes) -> bytes:
    """The message the next hop must get (after our Received line): every
    line ending in CRLF, the smuggled transaction only body text."""
    return HEAD + b"hello\r\n" + middle + b"\r\n" + SMUGGLED


def submit_smtp(port: int, data: bytes, replies: int = 1) -> list[tuple[int, bytes]]:
    """One transaction with raw DATA bytes (nothing normalised, nothing
    stuffed, "." CRLF added); the first C{replies} replies after them.
    Blocking."""
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        client.ehlo("outbound.client")
        client.user, client.password = "anyone", SMTP_KEY
        code, text = client.auth("PLAIN", client.auth_plain)
        if code != 235:
            raise AssertionError(f"AUTH PLAIN: {code} {text!r}")
        for command, expected in ((f"MAIL FROM:<{SENDER}>", 250),
                                  (f"RCPT TO:<{RECIPIENT}>", 250), ("DATA", 354)):
            code, text = client.docmd(command)
            if code != expected:
                raise AssertionError(f"{command}: {code} {text!r}")
        client.sock.sendall(data + b".\r\n")
        answers = [client.getreply() for _ in range(replies)]
        client.quit()
        return answers
    finally:
        client.close()


def submit_api(port: int, data: bytes) -> dict:
    """POST C{data} to C{/api/v1/send/raw}; the decoded JSON answer. Blocking."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/send/raw", method="POST",
        headers={"X-Server-API-Key": API_KEY, "Content-Type": "application/json"},
        data=json.dumps({"mail_from": SENDER, "rcpt_to": [RECIPIENT],
                         "data": base64.b64encode(data).decode()}).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            return json.loads(e.read())


class SharedGateway:
    """The module's gateway and the sink's listening socket, made for the
    first test and stopped after the last one of L{OutboundSmugglingTests}.

    @ivar gateway: the running L{Gateway}, or C{None}.
    @ivar listener: the sink's listening socket (outside the reactor: each
        test adopts it, so that trial's per-test reactor check stays clean).
    @ivar config: the gateway's config file, for the C{mailgw} command.
    """

    def __init__(self):
        self.gateway = None
        self.listener = None
        self.config = None
        #: the queue tokens of the submissions the tests saw accepted
        self.accepted = set()
        self._to_run = None

    @defer.inlineCallbacks
    def acquire(self, testcase):
        """The running gateway (started, tenancy and relay ready, on the
        first call)."""
        if self._to_run is None:
            self._to_run = {name for name in dir(type(testcase)) if name.startswith("test")}
        if self.gateway is None:
            yield self._start(testcase)
        return self.gateway

    def release(self, testcase):
        """C{testcase} is over; stop everything after the last test."""
        self._to_run.discard(testcase._testMethodName)
        if not self._to_run:
            self.stop()

    @defer.inlineCallbacks
    def _start(self, testcase):
        try:
            yield self._start_gateway(testcase)
        except BaseException:
            self.stop()
            raise

    @defer.inlineCallbacks
    def _start_gateway(self, testcase):
        folder = os.path.abspath(testcase.mktemp())
        os.makedirs(folder)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(50)
        self.listener.setblocking(False)
        url = "sqlite:" + os.path.join(folder, "mailgw.sqlite3")
        self.config = write_config(
            folder, database_url=url,
            listeners=[{"endpoint": "tcp:0:interface=127.0.0.1", "tls": "none"}],
            tables="\n".join([
                "[relay]", "enabled = true",
                f'smarthost = "127.0.0.1:{self.listener.getsockname()[1]}"',
                'tls = "none"', "poll_interval = 0.2", "retry_base = 1.0",
                "retry_max = 2.0",
                "[http_api]", 'endpoint = "tcp:0:interface=127.0.0.1"']))
        store = open_store(url, reactor)
        yield store.start()
        try:
            yield store.upgrade()
            yield store.add_organization("acme", "Acme")
            yield store.add_server("acme", "web", "Web")
            yield store.add_domain("good.example", server=("acme", "web"), verified=True)
            yield store.add_credential(("acme", "web"), "smtp", SMTP_KEY, name="smtp")
            yield store.add_credential(("acme", "web"), "api", API_KEY, name="api")
        finally:
            yield store.close()
        self.gateway = Gateway(folder, self.config, http_api=True)
        self.gateway.start(1)
        deadline = reactor.seconds() + SETTLE_TIMEOUT
        while not re.search(r"relay \S+ started: smarthost", self.gateway.log()):
            if reactor.seconds() > deadline:
                raise AssertionError("twistd mailgw did not start the relay:\n"
                                     + self.gateway.log()[-3000:])
            yield task.deferLater(reactor, 0.1, lambda: None)

    def stop(self):
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        if self.listener is not None:
            self.listener.close()
            self.listener = None


SHARED = SharedGateway()
atexit.register(SHARED.stop)


class OutboundSmugglingTests(unittest.TestCase):
    """Each end-of-data lookalike over SMTP and through the API (the test
    methods are made from L{LOOKALIKES} and L{NUL_LOOKALIKES} below the
    class). The methods return Deferreds: the reactor must run for the sink
    to answer, so the blocking clients run in threads."""

    @defer.inlineCallbacks
    def setUp(self):
        self.addCleanup(SHARED.release, self)
        self.gateway = yield SHARED.acquire(self)
        self.sink = Sink()
        port = reactor.adoptStreamPort(SHARED.listener.fileno(), socket.AF_INET, self.sink)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.sink.disconnect_all)
        # The relay ends every delivery with QUIT; the sink handles each
        # connection's bytes in order, so by then it has seen them all.
        self.delivered = self.sink.wait_for_command(b"QUIT")

    def log_tail(self) -> str:
        return "\ngateway log:\n" + self.gateway.log()[-3000:]

    def smtp(self, data: bytes, replies: int = 1):
        return threads.deferToThread(submit_smtp, self.gateway.port(), data, replies)

    def api(self, data: bytes):
        return threads.deferToThread(submit_api, self.gateway.api_port, data)

    def cli(self, *args):
        return threads.deferToThread(mailgw_cli, SHARED.config, *args)

    @defer.inlineCallbacks
    def smtp_accepted(self, data: bytes):
        """Submit over SMTP; the queue token of the 250 reply."""
        [(code, text)] = yield self.smtp(data)
        self.assertEqual(code, 250, text)
        token = QUEUED.match(text.decode()).group(1)
        SHARED.accepted.add(token)
        return token

    @defer.inlineCallbacks
    def api_accepted(self, data: bytes):
        """Submit through the API; the queue token of the success answer."""
        answer = yield self.api(data)
        self.assertEqual(answer["status"], "success", answer)
        self.assertEqual(list(answer["data"]["messages"]), [RECIPIENT])
        token = answer["data"]["messages"][RECIPIENT]["token"]
        SHARED.accepted.add(token)
        return token

    @defer.inlineCallbacks
    def assert_relayed_alone(self, token: str, expected: bytes):
        """The relay has delivered the message of C{token}, and nothing else:
        one transaction to the one recipient, C{expected} after our Received
        line, only CRLF lines on the wire and no smuggled command."""
        try:
            yield self.delivered.addTimeout(SETTLE_TIMEOUT, reactor)
        except defer.TimeoutError:
            self.fail(f"the relay did not deliver {token} (no QUIT at the sink)"
                      + self.log_tail())
        self.assertEqual(len(self.sink.messages), 1,
                         [(m.mail_from, m.rcpts, m.data) for m in self.sink.messages])
        [received] = self.sink.messages
        self.assertEqual((received.mail_from, received.rcpts, received.reply),
                         (SENDER, [RECIPIENT], b"250 2.0.0 Ok: queued"))
        ours, rest = received.data.split(b"\r\n", 1)
        self.assertTrue(ours.startswith(b"Received: from "), ours)
        self.assertIn(f" id {token}; ".encode(), ours)
        self.assertEqual(rest, expected)
        self.assert_crlf_only(received.wire)
        commands = [c for connection in self.sink.connections for c in connection.commands]
        mail = [c for c in commands if c.upper().startswith(b"MAIL")]
        rcpt = [c for c in commands if c.upper().startswith(b"RCPT")]
        self.assertEqual(len(mail), 1, commands)
        self.assertTrue(mail[0].startswith(f"MAIL FROM:<{SENDER}>".encode()), mail)
        self.assertEqual(rcpt, [f"RCPT TO:<{RECIPIENT}>".encode()], commands)
        for command in commands:
            self.assertNotIn(b"foreign.test", command)
            self.assertNotIn(b"victim@", command)
        # The relay considers it delivered, once: no retry will send it again.
        entries = yield self.cli("queue", "list", "--json")
        self.assertEqual([(e["rcpt_to"], e["status"], e["attempts"])
                          for e in entries if e["token"] == token],
                         [(RECIPIENT, "sent", 1)], entries)
        return entries

    def assert_crlf_only(self, wire: bytes):
        """C{wire} (the DATA between the 354 and the final dot) is lines
        that end in CRLF (RFC 5321 §2.3.8), those that start with a dot
        stuffed (RFC 5321 §4.5.2): no reading of it can end it early."""
        self.assertTrue(wire.endswith(b"\r\n"), wire[-20:])
        self.assertEqual(wire.count(b"\r"), wire.count(b"\r\n"), wire)
        self.assertEqual(wire.count(b"\n"), wire.count(b"\r\n"), wire)
        self.assertNotIn(b"\0", wire)
        lines = wire[:-2].split(b"\r\n")
        self.assertEqual([line for line in lines
                          if line.startswith(b".") and not line.startswith(b"..")], [])
        # The CRLF that ended the DATA command counts as the first line end.
        for lookalike in [END_OF_DATA] + [x for _, x, _ in LOOKALIKES] \
                + [x for _, x in NUL_LOOKALIKES]:
            self.assertNotIn(lookalike, b"\r\n" + wire, lookalike)

    @defer.inlineCallbacks
    def assert_nothing_relayed_after_refusal(self):
        """A clean message sent after the refused one arrives alone (had the
        refused one been queued, it would have gone first or with it), and
        the queue holds only the submissions the module saw accepted."""
        token = yield self.smtp_accepted(CLEAN)
        entries = yield self.assert_relayed_alone(token, CLEAN)
        self.assertEqual({e["token"] for e in entries}, SHARED.accepted, entries)

    # -- the two cases that are not lookalikes ---------------------------------------

    @defer.inlineCallbacks
    def test_smtp_real_end_of_data_then_own_second_transaction(self):
        """Over SMTP CRLF "." CRLF is the real end (RFC 5321 §4.1.4): what
        follows is the client's own pipelined transaction, held to the sender
        policy like any other and refused; only the first message arrives."""
        replies = yield self.smtp(message(END_OF_DATA), replies=5)
        first = QUEUED.match(replies[0][1].decode())
        self.assertEqual((replies[0][0], bool(first)), (250, True), replies)
        SHARED.accepted.add(first.group(1))
        self.assertEqual(replies[1:], [(250, b"OK"), (250, b"OK"), (354, b"Go ahead"),
                                       (530, b"From/Sender name is not valid")])
        yield self.assert_relayed_alone(first.group(1), HEAD + b"hello\r\n")

    @defer.inlineCallbacks
    def test_api_real_end_of_data_is_stuffed(self):
        """Through the API a message may hold CRLF "." CRLF as text: it is
        stored as given and the relay dot-stuffs it (RFC 5321 §4.5.2)."""
        token = yield self.api_accepted(message(END_OF_DATA))
        yield self.assert_relayed_alone(token, relayed(b"."))
        self.assertIn(b"\r\n..\r\n", self.sink.messages[0].wire)


def _lookalike_test(channel: str, lookalike: bytes, middle: bytes):
    @defer.inlineCallbacks
    def test(self):
        if channel == "smtp":
            token = yield self.smtp_accepted(message(lookalike))
        else:
            token = yield self.api_accepted(message(lookalike))
        yield self.assert_relayed_alone(token, relayed(middle))
    test.__doc__ = (f"{lookalike!r} then a second transaction, {channel}: accepted, "
                    "relayed as one message of CRLF lines.")
    return test


def _nul_test(channel: str, lookalike: bytes):
    @defer.inlineCallbacks
    def test(self):
        if channel == "smtp":
            replies = yield self.smtp(message(lookalike))
            self.assertEqual(replies, [(554, b"Message body contains a NUL byte")])
        else:
            answer = yield self.api(message(lookalike))
            self.assertEqual((answer["status"], answer["data"]["code"],
                              answer["data"]["message"]),
                             ("error", "MalformedMessage", "Message body contains a NUL byte"),
                             answer)
        yield self.assert_nothing_relayed_after_refusal()
    test.__doc__ = (f"{lookalike!r} then a second transaction, {channel}: refused for "
                    "its NUL byte; nothing of it is relayed.")
    return test


for _name, _lookalike, _smtp_middle in LOOKALIKES:
    setattr(OutboundSmugglingTests, f"test_smtp_{_name}",
            _lookalike_test("smtp", _lookalike, _smtp_middle))
    setattr(OutboundSmugglingTests, f"test_api_{_name}",
            _lookalike_test("api", _lookalike, b"."))
for _name, _lookalike in NUL_LOOKALIKES:
    setattr(OutboundSmugglingTests, f"test_smtp_nul_{_name}", _nul_test("smtp", _lookalike))
    setattr(OutboundSmugglingTests, f"test_api_nul_{_name}", _nul_test("api", _lookalike))
del _name, _lookalike, _smtp_middle
