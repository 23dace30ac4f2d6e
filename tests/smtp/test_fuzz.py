"""Property-based tests of the protocol: random and mutated command streams,
AUTH payloads, MIME headers and very long lines.

The protocol runs over a StringTransport against an in-memory directory whose
Deferreds have already fired, so hypothesis can drive thousands of dialogues
quickly; the real store is exercised everywhere else. Properties:

- no exception escapes and nothing is logged as an error;
- every reply is a well-formed SMTP reply line;
- no session that did not authenticate (and whose address no smtp-ip
  credential covers) ever has a recipient accepted — the gateway is never an
  open relay;
- no credential key, and no AUTH payload, ever reaches a log line.
"""
from __future__ import annotations

import base64
import re

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from mailgw.auth.realm import build_portal
from mailgw.model import Credential, Server
from mailgw.smtp.delivery import SubmissionDelivery
from mailgw.smtp.factory import ProtocolSettings, SubmissionFactory
from mailgw.smtp.protocol import SubmissionProtocol
from mailgw.submission import CoreSettings, Refusal, SubmissionCore
from mailgw.submission.headers import parse_fields
from mailgw.submission.policy import AuthorisedDomains, check_sender_fields

KEY = "FuzzKey00000000000000000"
SERVER = Server(id=1, organization_id=1, organization_permalink="acme", permalink="web",
                name="Web")
CREDENTIAL = Credential(id=1, server_id=1, type="smtp", key=KEY)
REPLY = re.compile(rb"^[2-5]\d\d[ -][\x20-\x7e]*$")


class MemoryDirectory:
    """The directory and queue calls the protocol makes, answered at once."""

    def __init__(self):
        self.enqueued = []

    def credential_by_key(self, key, type):
        return defer.succeed((CREDENTIAL, SERVER) if key == KEY and type == "smtp" else None)

    def credentials_of_server(self, org, server, type):
        return defer.succeed((SERVER, [CREDENTIAL]) if (org, server) == ("acme", "web") else None)

    def credential_for_address(self, address):
        return defer.succeed(None)

    def credential_by_id(self, credential_id):
        return defer.succeed((CREDENTIAL, SERVER))

    def server_by_id(self, server_id):
        return defer.succeed(SERVER)

    def authorised_domains(self, server_id):
        return defer.succeed((frozenset({"good.example"}), None))

    def touch_credential(self, credential_id, when):
        return defer.succeed(None)

    def messages_since(self, server_id, since):
        return defer.succeed(0)

    def enqueue(self, envelope, body):
        body.seek(0)
        self.enqueued.append((envelope, body.read()))
        return defer.succeed({r: i for i, r in enumerate(envelope.rcpt_to)})


class RecordingProtocol(SubmissionProtocol):
    """Counts recipients accepted while the session has no identity."""
    unauthorised_accepts = 0

    def _check_recipient(self, avatar, recipient):
        before = len(self.recipients)
        d = super()._check_recipient(avatar, recipient)

        def after(result):
            if len(self.recipients) > before and self.session.mechanism is None:
                self.unauthorised_accepts += 1
            return result
        return d.addBoth(after) if d is not None else None


def new_session(directory):
    clock = Clock()
    settings_ = ProtocolSettings(hostname="fuzz.test", max_message_size=64 * 1024,
                                 max_recipients=5)

    core = SubmissionCore(directory, clock, CoreSettings("fuzz.test", 64 * 1024))

    def make_delivery(identity, session):
        return SubmissionDelivery(identity, session, core, directory)

    factory = SubmissionFactory(settings_, build_portal(directory, clock, make_delivery), clock)
    factory.protocol = RecordingProtocol
    transport = StringTransport(peerAddress=IPv4Address("TCP", "203.0.113.9", 5000))
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(transport)
    return protocol, transport


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


_plausible = st.sampled_from([
    b"EHLO client.example", b"HELO client.example", b"MAIL FROM:<a@good.example>",
    b"MAIL FROM:<>", b"RCPT TO:<r@dest.example>", b"RCPT TO:<s@dest.example>", b"DATA",
    b"From: a@good.example", b"From: x@evil.example", b"", b"body", b".", b"..x", b"RSET",
    b"NOOP", b"AUTH PLAIN " + b64(b"\0u\0wrong"), b"AUTH PLAIN " + b64(b"\0u\0" + KEY.encode()),
    b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH CRAM-MD5", b64(b"user"), b64(KEY.encode()),
    b64(b"acme/web 0123"), b"*", b"=", b"STARTTLS", b"VRFY x", b"BDAT 10 LAST",
    b"MAIL FROM:<a@good.example> SIZE=999999999", b"RCPT TO:<>", b"RCPT TO:<nodomain>"])
_mutated = st.one_of(
    st.binary(max_size=60),
    st.text(max_size=40).map(lambda t: t.encode("utf-8")),
    st.tuples(_plausible, st.binary(max_size=8)).map(lambda p: p[0] + p[1]),
    st.tuples(_plausible, st.integers(min_value=0, max_value=40)).map(lambda p: p[0][:p[1]]),
    st.integers(min_value=4000, max_value=100_000).map(lambda n: b"A" * n))
_line = st.one_of(_plausible, _plausible, _plausible, _mutated)
_ending = st.sampled_from([b"\r\n", b"\n", b"\r\n", b"\r\n"])
_auth = st.sampled_from([
    [], [], [b"AUTH PLAIN " + b64(b"\0u\0wrong")], [b"AUTH LOGIN", b64(b"u"), b64(b"nope")],
    [b"AUTH PLAIN " + b64(b"\0u\0" + KEY.encode())], [b"AUTH LOGIN", b64(b"u"), b64(KEY.encode())],
    [b"AUTH CRAM-MD5", b64(b"acme/web 0123")], [b"AUTH PLAIN", b"*"]])


@st.composite
def _dialogue(draw):
    """A plausible session (greeting, maybe AUTH, transactions), then mangled:
    lines dropped, repeated, and random lines inserted."""
    lines = [draw(st.sampled_from([b"EHLO client.example", b"HELO c", b""]))]
    lines += draw(_auth)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        lines.append(draw(st.sampled_from([b"MAIL FROM:<a@good.example>", b"MAIL FROM:<>"])))
        lines += [b"RCPT TO:<r%d@dest.example>" % i
                  for i in range(draw(st.integers(min_value=0, max_value=7)))]
        lines += [b"DATA", draw(st.sampled_from([b"From: a@good.example",
                                                 b"From: x@evil.example"])),
                  b"", b"body", b"."]
    mangled = []
    for line in lines:
        action = draw(st.sampled_from(["keep"] * 6 + ["drop", "twice", "insert"]))
        if action == "twice":
            mangled += [line, line]
        elif action == "insert":
            mangled += [draw(_line), line]
        elif action == "keep":
            mangled.append(line)
    return b"".join(line + draw(_ending) for line in mangled)


_stream = st.one_of(_dialogue(), st.lists(st.tuples(_line, _ending), max_size=30).map(
    lambda parts: b"".join(line + end for line, end in parts)))


class FuzzTests(unittest.TestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def run_stream(self, data: bytes, cuts):
        directory = MemoryDirectory()
        protocol, transport = new_session(directory)
        previous = 0
        for cut in sorted(c for c in cuts if c < len(data)) + [len(data)]:
            protocol.dataReceived(data[previous:cut])
            previous = cut
        protocol.connectionLost(None)
        return protocol, transport, directory

    @settings(max_examples=400, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(_stream, st.lists(st.integers(min_value=0, max_value=2000), max_size=5))
    def test_random_streams(self, data, cuts):
        protocol, transport, directory = self.run_stream(data, cuts)
        self.assertEqual(protocol.unauthorised_accepts, 0)
        lines = transport.value().split(b"\r\n")
        self.assertEqual(lines[-1], b"")
        for line in lines[:-1]:
            self.assertRegex(line, REPLY)
        authenticated = b"235 Granted for acme/web" in transport.value()
        for _envelope, body in directory.enqueued:
            self.assertTrue(authenticated)
            self.assertLessEqual(len(body), 64 * 1024)
        errors = [e for e in self.events if e.get("log_failure") is not None]
        self.assertEqual(errors, [], [formatEvent(e) for e in errors])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.events.clear()

    @settings(max_examples=200, deadline=None)
    @given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                   min_size=24, max_size=24),
           st.sampled_from(["PLAIN", "LOGIN", "LOGIN-INITIAL", "CRAM-MD5"]))
    def test_no_secret_in_logs_or_reprs(self, secret, mechanism):
        directory = MemoryDirectory()
        protocol, transport = new_session(directory)
        payloads = {
            "PLAIN": [b"AUTH PLAIN " + b64(b"\0user\0" + secret.encode())],
            "LOGIN": [b"AUTH LOGIN", b64(b"user"), b64(secret.encode())],
            "LOGIN-INITIAL": [b"AUTH LOGIN " + b64(b"user"), b64(secret.encode())],
            "CRAM-MD5": [b"AUTH CRAM-MD5", b64(b"acme/web " + secret.encode())],
        }[mechanism]
        for line in payloads:
            protocol.dataReceived(line + b"\r\n")
        texts = [formatEvent(e) + repr(e) for e in self.events]
        texts.append(repr(protocol.__dict__))
        texts.append(repr(CREDENTIAL))
        secrets = [secret, b64(secret.encode()).decode(),
                   b64(b"\0user\0" + secret.encode()).decode(), KEY]
        for text in texts:
            for value in secrets:
                self.assertNotIn(value, text)
        self.assertIn(b"535", transport.value())
        protocol.connectionLost(None)
        self.events.clear()

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(
        st.sampled_from(["From", "Sender", "from", "FROM ", "Received", "X"]),
        st.text(max_size=80)), max_size=8), st.booleans())
    def test_random_header_blocks_never_crash_the_policy(self, fields, allow_sender):
        block = "".join(f"{name}: {value}\r\n" for name, value in fields).encode(
            "utf-8", "surrogateescape") + b"\r\n"
        try:
            parsed = parse_fields(block)
        except Refusal:
            return  # refused whole at the end of DATA: no policy to crash
        result = check_sender_fields(
            parsed, allow_sender_header=allow_sender,
            authorised=AuthorisedDomains(frozenset({"good.example"}), None))
        self.assertIn(result, (None, "good.example"))
