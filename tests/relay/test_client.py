"""The relay's SMTP client against the sink server on real loopback sockets:
byte-exact bodies (dot-stuffing at every chunk boundary, CRLF kept, a 20 MB
body, bare line ends sent as CRLF), STARTTLS (verified and opportunistic),
implicit TLS, AUTH PLAIN and LOGIN, HELO fallback, RSET between messages,
refusals and timeouts; and the wire pieces (reply parser, dot-stuffer) on
their own."""
from __future__ import annotations

import random

from twisted.internet import defer, endpoints, error, reactor, ssl
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailgw.relay.client import BytesBody, ClientSettings, connect
from mailgw.relay.errors import DeliveryError
from mailgw.relay.wire import (DotStuffer, MalformedReply, Reply, ReplyParser,
                               SMTPConnection)
from mailgw.store.base import CHUNK_SIZE
from tests.relay.sink import Sink, certificate, text_body, unstuff

KIB16 = 16 * 1024


def body_with_dots_at(offsets, size) -> bytes:
    """A CRLF body of C{size} bytes with a line starting with "." at each offset."""
    out = bytearray(b"x" * size)
    for i in range(0, size, 80):
        out[i:i + 2] = b"\r\n"
    for offset in offsets:
        out[offset - 2:offset + 3] = b"\r\n.\r\n"  # a lone dot line starting at offset
    out[:5] = b"Subj:"
    out[-2:] = b"\r\n"
    return bytes(out)


class WireTests(unittest.SynchronousTestCase):
    def test_reply_parser_multiline_across_feeds(self):
        parser = ReplyParser()
        self.assertEqual(parser.feed(b"250-sink.test\r\n250-SIZE 10"), [])
        replies = parser.feed(b"0\r\n250 8BITMIME\r\n220 x\r\n")
        self.assertEqual(replies, [Reply(250, ("sink.test", "SIZE 100", "8BITMIME")),
                                   Reply(220, ("x",))])
        self.assertEqual(replies[0].text, "250 sink.test SIZE 100 8BITMIME")

    def test_reply_parser_rejects_garbage(self):
        for data in (b"hello\r\n", b"25 x\r\n", b"250-a\r\n251 b\r\n", b"2" * 20000):
            self.assertRaises(MalformedReply, ReplyParser().feed, data)

    def test_dot_stuffer_same_output_for_any_chunking(self):
        body = (b".first\r\n..two\r\n.\r\nmid.dle\r\n\r\n.\r\nbare\n.lf\r\n"
                b"cr\r.x\r\nend.")
        whole = DotStuffer()
        expected = whole.feed(body) + whole.end()
        self.assertEqual(expected, b"..first\r\n...two\r\n..\r\nmid.dle\r\n\r\n..\r\n"
                                   b"bare\r\n..lf\r\ncr\r\n..x\r\nend.\r\n.\r\n")
        rand = random.Random(7)
        for _ in range(200):
            cuts = sorted(rand.sample(range(1, len(body)), rand.randint(1, 12)))
            stuffer, out, last = DotStuffer(), b"", 0
            for cut in cuts + [len(body)]:
                out += stuffer.feed(body[last:cut])
                last = cut
            self.assertEqual(out + stuffer.end(), expected, cuts)

    def test_dot_stuffer_end(self):
        for body, end in ((b"", b".\r\n"), (b"a\r\n", b".\r\n"), (b"a", b"\r\n.\r\n"),
                          (b"a\n", b".\r\n"), (b"a\r", b"\r\n.\r\n")):
            stuffer = DotStuffer()
            stuffer.feed(body)
            self.assertEqual(stuffer.end(), end, body)

    def test_dot_stuffer_crlf_split_across_chunks(self):
        """A CR that ends a chunk and the LF that starts the next are one
        line end, not a bare CR and a bare LF."""
        stuffer = DotStuffer()
        out = b"".join(stuffer.feed(c) for c in (b"a\r", b"\n.b\r", b"", b"\r", b".c"))
        self.assertEqual(out + stuffer.end(), b"a\r\n..b\r\n\r\n..c\r\n.\r\n")

    def test_dot_stuffer_crlf_body_is_the_same_object(self):
        """The usual chunk (CRLF lines, no line starting with a dot) is
        handed back as it is: no copy, no per-line work."""
        chunk = b"Subject: x\r\n\r\n" + b"a line of text\r\n" * 1000
        self.assertIs(DotStuffer().feed(chunk), chunk)


class ConnectionTests(unittest.SynchronousTestCase):
    def connection(self):
        from twisted.internet.testing import StringTransport
        connection = SMTPConnection(Clock(), 300)
        connection.makeConnection(StringTransport())
        return connection

    def test_cancelled_reply_drops_the_connection_and_is_never_fired_again(self):
        connection = self.connection()
        d = connection.command(b"NOOP")
        later = connection.reply()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.failureResultOf(later, defer.CancelledError)
        self.assertTrue(connection.transport.disconnected)
        connection.dataReceived(b"250 late\r\n")  # no AlreadyCalledError
        connection.connectionLost(Failure(error.ConnectionAborted()))
        self.failureResultOf(connection.reply(), defer.CancelledError)
        self.assertEqual(connection.clock.getDelayedCalls(), [])

    def test_cancelled_drain_drops_the_connection(self):
        connection = self.connection()
        connection.pauseProducing()
        d = connection.drained()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(connection.transport.disconnected)
        connection.resumeProducing()  # no AlreadyCalledError
        self.assertEqual(connection.clock.getDelayedCalls(), [])


class ClientTestBase(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()

    def sink(self, **kw):
        implicit = kw.pop("implicit_tls", None)
        sink = Sink(**kw)
        self.port = sink.listen(self, implicit_tls=implicit)
        return sink

    def settings(self, **kw):
        kw.setdefault("helo_name", "relay.mailgw.test")
        return ClientSettings(**kw)

    @defer.inlineCallbacks
    def session(self, settings=None, endpoint=None):
        endpoint = endpoint or endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        session = yield connect(endpoint, self.clock, settings or self.settings(),
                                f"sink [127.0.0.1]:{self.port}")
        self.addCleanup(self.close, session)
        return session

    def close(self, session):
        session.quit()
        return session.connection.when_closed()

    def send(self, session, body, chunk_size=KIB16, rcpts=("to@dest.test",),
             mail_from="from@src.test"):
        return session.send(mail_from, list(rcpts), BytesBody(body, chunk_size), len(body))


class ByteExactTests(ClientTestBase):
    @defer.inlineCallbacks
    def test_dots_at_chunk_boundaries(self):
        """Lines starting with "." exactly at 16 KiB multiples and at the
        store's chunk size arrive intact: nothing ends DATA early."""
        sink = self.sink()
        offsets = [KIB16, 2 * KIB16, 65536, CHUNK_SIZE, CHUNK_SIZE + KIB16]
        body = body_with_dots_at(offsets, CHUNK_SIZE + 3 * KIB16)
        session = yield self.session()
        for chunk_size in (KIB16, CHUNK_SIZE, 65536, 1000):
            replies = yield self.send(session, body, chunk_size)
            self.assertEqual(replies["to@dest.test"].code, 250)
        self.assertEqual(len(sink.messages), 4)
        for message in sink.messages:
            self.assertEqual(message.data, body)
            for offset in offsets:
                self.assertEqual(message.data[offset:offset + 3], b".\r\n")
        self.assertEqual(sink.messages[0].wire.count(b"\r\n..\r\n"), len(offsets))

    @defer.inlineCallbacks
    def test_first_byte_dot_and_crlf_kept(self):
        sink = self.sink()
        body = b".starts with a dot\r\n\r\n..two\r\nlast line without CRLF"
        session = yield self.session()
        yield self.send(session, body, chunk_size=1)
        wire = sink.messages[0].wire
        self.assertTrue(wire.startswith(b"..starts with a dot\r\n"))
        self.assertNotIn(b"\r\r\n", wire)
        # the missing final CRLF is added, so the message ends where it should
        self.assertEqual(sink.messages[0].data, body + b"\r\n")

    @defer.inlineCallbacks
    def test_bare_line_ends_go_out_as_crlf_lines(self):
        """A body that should never have been stored, with a bare "LF . LF"
        and a command after it: one message arrives, CRLF throughout, and
        the sink hears no command that was part of the body."""
        sink = self.sink()
        body = b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<x@y>\rRCPT TO:<z@y>\n.\r"
        session = yield self.session()
        for chunk_size in (1, 3, KIB16):
            replies = yield self.send(session, body, chunk_size)
            self.assertEqual(replies["to@dest.test"].code, 250)
        expected = (b"Subject: x\r\n\r\nhi\r\n.\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@y>\r\n"
                    b".\r\n")
        self.assertEqual([m.data for m in sink.messages], [expected] * 3)
        self.assertEqual([c.split(b" ")[0] for c in sink.connections[0].commands],
                         [b"EHLO", b"MAIL", b"RCPT", b"DATA"] + [b"RSET", b"MAIL", b"RCPT",
                                                                  b"DATA"] * 2)

    @defer.inlineCallbacks
    def test_empty_body(self):
        sink = self.sink()
        session = yield self.session()
        replies = yield self.send(session, b"")
        self.assertEqual(replies["to@dest.test"].code, 250)
        self.assertEqual(sink.messages[0].data, b"")

    @defer.inlineCallbacks
    def test_twenty_megabytes_byte_for_byte(self):
        sink = self.sink()
        body = text_body(20 * 1024 * 1024, seed=20)
        session = yield self.session()
        replies = yield self.send(session, body, chunk_size=CHUNK_SIZE)
        self.assertEqual(replies["to@dest.test"].code, 250)
        received = sink.messages[0]
        self.assertEqual(len(received.data), len(body))
        self.assertTrue(received.data == body, "the 20 MB body changed on the way")
        self.assertEqual(unstuff(received.wire), body)


class DialogueTests(ClientTestBase):
    @defer.inlineCallbacks
    def test_rset_between_messages_and_per_recipient_replies(self):
        sink = self.sink()
        sink.rcpt_replies["bad@dest.test"] = b"550 5.1.1 <bad@dest.test>: unknown user"
        sink.data_replies = [b"250 2.0.0 first", b"452 4.3.1 full, try later"]
        session = yield self.session()
        first = yield self.send(session, b"one\r\n", rcpts=["a@dest.test", "bad@dest.test"])
        second = yield self.send(session, b"two\r\n", rcpts=["b@dest.test"])
        self.assertEqual(first["a@dest.test"].text, "250 2.0.0 first")
        self.assertEqual(first["bad@dest.test"].code, 550)
        self.assertTrue(first["bad@dest.test"].permanent)
        self.assertEqual(second["b@dest.test"].code, 452)
        commands = [c.split(b" ")[0] for c in sink.connections[0].commands]
        self.assertEqual(commands, [b"EHLO", b"MAIL", b"RCPT", b"RCPT", b"DATA",
                                    b"RSET", b"MAIL", b"RCPT", b"DATA"])
        self.assertEqual(len(sink.connections), 1)
        self.assertEqual(sink.connections[0].commands[1],
                         b"MAIL FROM:<from@src.test> SIZE=5 BODY=8BITMIME")

    @defer.inlineCallbacks
    def test_all_recipients_refused_skips_data(self):
        sink = self.sink()
        sink.rcpt_replies["x@dest.test"] = b"450 4.2.0 greylisted"
        session = yield self.session()
        replies = yield self.send(session, b"x\r\n", rcpts=["x@dest.test"])
        self.assertEqual(replies["x@dest.test"].code, 450)
        self.assertNotIn(b"DATA", sink.connections[0].commands)

    @defer.inlineCallbacks
    def test_mail_refused_applies_to_every_recipient(self):
        sink = self.sink()
        sink.mail_reply = b"553 5.7.1 sender refused"
        session = yield self.session()
        replies = yield self.send(session, b"x\r\n", rcpts=["a@dest.test", "b@dest.test"])
        self.assertEqual({r.code for r in replies.values()}, {553})

    @defer.inlineCallbacks
    def test_helo_fallback(self):
        sink = self.sink()
        sink.refuse_ehlo = True
        sink.extensions = []
        session = yield self.session()
        yield self.send(session, b"x\r\n")
        self.assertEqual([c.split(b" ")[0] for c in sink.connections[0].commands[:3]],
                         [b"EHLO", b"HELO", b"MAIL"])
        self.assertEqual(sink.connections[0].commands[2], b"MAIL FROM:<from@src.test>")

    @defer.inlineCallbacks
    def test_refused_greeting(self):
        sink = self.sink()
        sink.greeting = b"554 5.3.2 no service"
        e = yield self.assertFailure(self.session(), DeliveryError)
        self.assertEqual((e.code, e.permanent), (554, False))
        self.assertIn("greeting refused: 554 5.3.2 no service", e.text)

    @defer.inlineCallbacks
    def test_non_ascii_address_without_smtputf8(self):
        sink = self.sink()
        sink.extensions = []
        session = yield self.session()
        replies = yield self.send(session, b"x\r\n", rcpts=["j\u00f6rg@dest.test"])
        self.assertEqual(replies["j\u00f6rg@dest.test"].code, 553)
        self.assertNotIn(b"MAIL", [c.split(b" ")[0] for c in sink.connections[0].commands])

    @defer.inlineCallbacks
    def test_smtputf8_when_offered(self):
        sink = self.sink()
        session = yield self.session()
        yield self.send(session, b"x\r\n", rcpts=["j\u00f6rg@dest.test"])
        self.assertTrue(sink.connections[0].commands[1].endswith(b" SMTPUTF8"))
        self.assertEqual(sink.messages[0].rcpts, ["j\u00f6rg@dest.test"])

    @defer.inlineCallbacks
    def test_reply_timeout(self):
        sink = self.sink()
        sink.silent_at = b"END"
        session = yield self.session()
        d = self.send(session, b"x\r\n")
        yield sink.wait_for(1)  # the sink has the message and says nothing
        self.clock.advance(299)
        self.assertNoResult(d)
        self.clock.advance(2)
        e = yield self.assertFailure(d, DeliveryError)
        self.assertEqual(e.text, "timeout: no reply to the end of DATA within 300 s")

    @defer.inlineCallbacks
    def test_connection_refused(self):
        port = reactor.listenTCP(0, Sink(), interface="127.0.0.1")
        self.port = port.getHost().port
        yield port.stopListening()  # nothing listens there now
        e = yield self.assertFailure(self.session(), DeliveryError)
        self.assertEqual((e.text, e.code, e.permanent), ("connection refused", None, False))


class TLSAndAuthTests(ClientTestBase):
    def trusted(self, hostname="localhost"):
        _, public = certificate("localhost")
        return ssl.optionsForClientTLS(hostname, trustRoot=public)

    @defer.inlineCallbacks
    def test_starttls_verified_then_auth_plain(self):
        server_options, _ = certificate("localhost")
        sink = self.sink(tls_options=server_options, users={"relay": "s3cret"})
        session = yield self.session(self.settings(
            tls="starttls", tls_options=self.trusted(), username="relay", password="s3cret"))
        self.assertTrue(session.secure)
        yield self.send(session, b"secret body\r\n")
        record = sink.connections[0]
        self.assertTrue(record.tls)
        self.assertEqual(record.user, "relay")
        self.assertEqual([c.split(b" ")[0] for c in record.commands],
                         [b"EHLO", b"STARTTLS", b"EHLO", b"AUTH", b"MAIL", b"RCPT", b"DATA"])
        self.assertEqual(sink.messages[0].data, b"secret body\r\n")

    @defer.inlineCallbacks
    def test_large_body_over_starttls(self):
        """Flow control through the TLS layer: 5 MB in store-sized chunks."""
        server_options, _ = certificate("localhost")
        sink = self.sink(tls_options=server_options)
        body = text_body(5 * 1024 * 1024, seed=5)
        session = yield self.session(self.settings(tls="starttls", tls_options=self.trusted()))
        replies = yield self.send(session, body, chunk_size=CHUNK_SIZE)
        self.assertEqual(replies["to@dest.test"].code, 250)
        self.assertTrue(sink.messages[0].data == body, "the body changed on the way")

    @defer.inlineCallbacks
    def test_starttls_wrong_name_fails_verification(self):
        server_options, _ = certificate("localhost")
        sink = self.sink(tls_options=server_options)
        e = yield self.assertFailure(self.session(self.settings(
            tls="starttls", tls_options=self.trusted("smarthost.example"))), DeliveryError)
        self.assertFalse(e.permanent)
        self.assertEqual(e.text, "TLS failed: the certificate does not name the host")
        self.assertEqual(sink.messages, [])

    @defer.inlineCallbacks
    def test_starttls_required_but_not_offered(self):
        self.sink()
        e = yield self.assertFailure(self.session(self.settings(
            tls="starttls", tls_options=self.trusted())), DeliveryError)
        self.assertEqual(e.text, "the server does not offer STARTTLS")

    @defer.inlineCallbacks
    def test_opportunistic_tls_used_when_offered_and_skipped_when_not(self):
        server_options, _ = certificate("localhost")
        with_tls = self.sink(tls_options=server_options)
        settings = self.settings(tls="opportunistic", tls_options=ssl.CertificateOptions())
        session = yield self.session(settings)
        yield self.send(session, b"x\r\n")
        self.assertTrue(with_tls.connections[0].tls)
        plain = self.sink()
        session = yield self.session(settings)
        yield self.send(session, b"y\r\n")
        self.assertFalse(session.secure)
        self.assertEqual(plain.messages[0].data, b"y\r\n")

    @defer.inlineCallbacks
    def test_implicit_tls(self):
        server_options, _ = certificate("localhost")
        sink = self.sink(implicit_tls=server_options)
        endpoint = endpoints.wrapClientTLS(self.trusted(), endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", self.port))
        session = yield self.session(self.settings(tls="implicit"), endpoint)
        yield self.send(session, b"over TLS\r\n")
        self.assertEqual(sink.messages[0].data, b"over TLS\r\n")

    @defer.inlineCallbacks
    def test_auth_login(self):
        sink = self.sink(users={"relay": "s3cret"})
        sink.auth_mechanisms = b"LOGIN"
        session = yield self.session(self.settings(username="relay", password="s3cret"))
        yield self.send(session, b"x\r\n")
        self.assertEqual(sink.connections[0].user, "relay")
        self.assertEqual(sink.connections[0].commands[1:4],
                         [b"AUTH LOGIN", b"cmVsYXk=", b"czNjcmV0"])

    @defer.inlineCallbacks
    def test_auth_refused_keeps_the_password_out_of_the_error(self):
        self.sink(users={"relay": "s3cret"})
        e = yield self.assertFailure(self.session(self.settings(
            username="relay", password="wrong-password")), DeliveryError)
        self.assertEqual(e.code, 535)
        self.assertIn("AUTH refused: 535", e.text)
        self.assertNotIn("wrong-password", repr(e))
