"""The wire contract (docs/smtp.md §2–§7), reply by reply, over a
StringTransport with a Clock and a real SQLite store."""
from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from mailgw.smtp.protocol import MAX_BUFFER
from tests.helpers import on_postgres, HOSTNAME, Harness, b64, cram_answer, make_store, seed_tenancy

KEY = "K" * 24
MESSAGE = ("From: Sender <me@good.example>\r\nTo: you@dest.example\r\n"
           "Subject: hello\r\n\r\nbody line\r\n.\r\n")


class ProtocolTestBase(unittest.TestCase):
    client_ip = "192.0.2.7"
    settings = {}

    @defer.inlineCallbacks
    def setUp(self):
        self.real_store = yield make_store(self)
        self.tenancy = yield seed_tenancy(self.real_store)
        self.h = Harness(self, self.real_store, client_ip=self.client_ip, **self.settings)
        self.greeting = self.h.connect()

    def send(self, data):
        return self.h.send(data)

    def lines(self, *commands):
        return self.h.lines(*commands)

    @defer.inlineCallbacks
    def authenticated(self, key=KEY):
        replies = yield self.lines("EHLO client.example", "AUTH PLAIN " + b64(f"\0x\0{key}"))
        self.assertEqual(replies[-1], b"235 Granted for acme/web")

    @defer.inlineCallbacks
    def queued_entries(self):
        entries = yield self.real_store.list_entries()
        return entries


class ConnectionTests(ProtocolTestBase):
    def test_greeting(self):
        [line] = self.greeting
        prefix = f"220 {HOSTNAME} ESMTP mailgw/".encode()
        self.assertTrue(line.startswith(prefix), line)
        trace = line[len(prefix):]
        self.assertRegex(trace.decode(), r"^[A-Z0-9]{8}$")

    @defer.inlineCallbacks
    def test_ehlo_capabilities(self):
        replies = yield self.lines("EHLO client.example")
        self.assertEqual(replies, [
            f"250-{HOSTNAME}".encode(), b"250-PIPELINING", b"250-SIZE 1048576",
            b"250-8BITMIME", b"250-SMTPUTF8", b"250 AUTH CRAM-MD5 PLAIN LOGIN"])

    @defer.inlineCallbacks
    def test_helo(self):
        self.assertEqual((yield self.lines("HELO client.example")), [f"250 {HOSTNAME}".encode()])

    @defer.inlineCallbacks
    def test_helo_and_ehlo_without_argument(self):
        replies = yield self.lines("HELO", "EHLO", "EHLO   ")
        self.assertEqual(replies, [b"501 Syntax: EHLO hostname"] * 3)

    @defer.inlineCallbacks
    def test_rset_noop_quit(self):
        replies = yield self.lines("RSET", "NOOP", "NOOP anything", "QUIT")
        self.assertEqual(replies, [b"250 OK", b"250 OK", b"250 OK", b"221 Closing Connection"])
        self.assertTrue(self.h.transport.disconnecting)

    @defer.inlineCallbacks
    def test_verbs_are_case_insensitive(self):
        self.assertEqual((yield self.lines("noop", "hElO x")), [b"250 OK", f"250 {HOSTNAME}".encode()])

    @defer.inlineCallbacks
    def test_unsupported_commands(self):
        replies = yield self.lines("VRFY x", "EXPN x", "HELP", "BDAT 10", "ETRN x",
                                   "QUITX", "NOOPY", "", "MAIL", "\xe9t\xe9")
        self.assertEqual(replies, [b"502 Invalid/unsupported command"] * 8
                         + [b"501 Syntax: MAIL FROM:<address>", b"502 Invalid/unsupported command"])
        self.assertFalse(self.h.transport.disconnecting)

    @defer.inlineCallbacks
    def test_starttls_without_tls(self):
        self.assertEqual((yield self.lines("STARTTLS")), [b"502 TLS not available"])

    @defer.inlineCallbacks
    def test_bare_lf_command_line_accepted(self):
        self.assertEqual((yield self.send(b"NOOP\nNOOP\r\n")), [b"250 OK", b"250 OK"])

    @defer.inlineCallbacks
    def test_long_line_rejected_and_connection_usable(self):
        replies = yield self.send(b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n")
        self.assertEqual(replies, [b"500 Line too long", b"250 OK"])

    @defer.inlineCallbacks
    def test_long_line_arriving_in_pieces(self):
        for _ in range(3):
            self.assertEqual((yield self.send(b"y" * 3000)), [])
        self.assertEqual((yield self.send(b"tail\r\nNOOP\r\n")), [b"500 Line too long", b"250 OK"])

    def test_line_of_exactly_the_limit_is_a_command(self):
        d = self.send(b"NOOP " + b"x" * (4096 - 5) + b"\r\n")
        return d.addCallback(self.assertEqual, [b"250 OK"])

    @defer.inlineCallbacks
    def test_idle_timeout(self):
        self.h.clock.advance(299)
        self.assertEqual(self.h.take(), [])
        yield self.lines("NOOP")
        self.h.clock.advance(299)
        self.assertFalse(self.h.transport.disconnecting)
        self.h.clock.advance(2)
        self.assertEqual(self.h.take(), [f"421 {HOSTNAME} Timeout, closing connection".encode()])
        self.assertTrue(self.h.transport.disconnecting)

    def test_input_is_paused_while_a_flood_waits(self):
        self.h.protocol._busy = True  # as while a look-up is pending
        self.h.protocol.dataReceived(b"NOOP\r\n" * (MAX_BUFFER // 6 + 10))
        self.assertEqual(self.h.transport.producerState, "paused")
        self.h.protocol._resume(None)
        self.assertEqual(self.h.transport.producerState, "producing")
        self.assertEqual(len(self.h.take()), MAX_BUFFER // 6 + 10)


class InternalErrorTests(ProtocolTestBase):
    @defer.inlineCallbacks
    def test_synchronous_error_is_451_and_session_survives(self):
        yield self.authenticated()
        yield self.lines("MAIL FROM:<me@good.example>", "RCPT TO:<a@dest.example>")

        def broken(*args):
            raise OSError("spool directory gone")
        self.h.protocol.avatar.open_message = broken
        replies = yield self.lines("DATA", "NOOP")
        self.assertEqual(replies, [b"451 Temporary failure, please try again later", b"250 OK"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertIsNone(self.h.protocol.mail_from)


class ShutdownTests(ProtocolTestBase):
    def test_idle_session_told_at_once(self):
        self.h.protocol.shutdown()
        self.assertEqual(self.h.take(), [f"421 {HOSTNAME} Service shutting down".encode()])
        self.assertTrue(self.h.transport.disconnecting)

    @defer.inlineCallbacks
    def test_transaction_finishes_first(self):
        yield self.authenticated()
        yield self.lines("MAIL FROM:<me@good.example>", "RCPT TO:<a@dest.example>")
        self.h.protocol.shutdown()
        self.assertEqual(self.h.take(), [])
        replies = yield self.lines("DATA")
        self.assertEqual(replies, [b"354 Go ahead"])
        replies = yield self.send(MESSAGE + "NOOP\r\n")
        self.assertRegex(replies[0], rb"^250 OK: queued as ")
        self.assertEqual(replies[1:], [f"421 {HOSTNAME} Service shutting down".encode()])
        self.assertTrue(self.h.transport.disconnecting)
        self.assertTrue(self.h.protocol.closed.called or self.h.transport.disconnecting)


class ConnectionCapTests(ProtocolTestBase):
    settings = {"max_connections_per_ip": 1}

    def test_second_connection_from_same_address_refused(self):
        second = Harness(self, self.real_store, client_ip=self.client_ip,
                         max_connections_per_ip=1)
        second.factory = self.h.factory
        self.assertEqual(second.connect(),
                         [f"421 {HOSTNAME} Too many connections, try again later".encode()])
        self.assertTrue(second.transport.disconnecting)
        second.protocol.connectionLost(None)
        self.h.protocol.connectionLost(None)
        self.assertEqual(self.h.factory.total, 0)


class AuthTests(ProtocolTestBase):
    @defer.inlineCallbacks
    def test_plain_initial_response(self):
        yield self.authenticated()
        self.assertIsNotNone(self.h.protocol.avatar)

    @defer.inlineCallbacks
    def test_plain_any_user_name_and_authzid(self):
        replies = yield self.lines("EHLO x", "AUTH PLAIN " + b64(f"admin\0whoever\0{KEY}"))
        self.assertEqual(replies[-1], b"235 Granted for acme/web")

    @defer.inlineCallbacks
    def test_plain_with_challenge(self):
        replies = yield self.lines("EHLO x", "AUTH PLAIN")
        self.assertEqual(replies[-1], b"334 ")
        replies = yield self.lines(b64(f"\0x\0{KEY}"))
        self.assertEqual(replies, [b"235 Granted for acme/web"])

    @defer.inlineCallbacks
    def test_plain_unknown_key(self):
        replies = yield self.lines("EHLO x", "AUTH PLAIN " + b64("\0x\0" + "Z" * 24))
        self.assertEqual(replies[-1], b"535 Invalid credential")
        self.assertIsNone(self.h.protocol.avatar)

    @defer.inlineCallbacks
    def test_plain_malformed(self):
        replies = yield self.lines("AUTH PLAIN " + b64("onlyone"), "AUTH PLAIN =",
                                   "AUTH PLAIN " + b64("a\0b\0c\0d"))
        self.assertEqual(replies, [b"501 Malformed AUTH PLAIN response"] * 3)

    @defer.inlineCallbacks
    def test_ip_credential_key_does_not_authenticate(self):
        replies = yield self.lines("AUTH PLAIN " + b64("\x00x\x00198.51.100.0/24"))
        self.assertEqual(replies, [b"535 Invalid credential"])

    @defer.inlineCallbacks
    def test_login_as_in_the_seed(self):
        replies = yield self.lines("HELO example.com", "AUTH LOGIN", b64("som-smtp-user"), b64(KEY))
        self.assertEqual(replies, [f"250 {HOSTNAME}".encode(), b"334 VXNlcm5hbWU6",
                                   b"334 UGFzc3dvcmQ6", b"235 Granted for acme/web"])

    @defer.inlineCallbacks
    def test_login_initial_user_skips_first_prompt(self):
        replies = yield self.lines("AUTH LOGIN " + b64("user"), b64(KEY))
        self.assertEqual(replies, [b"334 UGFzc3dvcmQ6", b"235 Granted for acme/web"])

    @defer.inlineCallbacks
    def test_login_wrong_key(self):
        replies = yield self.lines("AUTH LOGIN", b64("u"), b64("nope"))
        self.assertEqual(replies[-1], b"535 Invalid credential")

    @defer.inlineCallbacks
    def test_cram_md5_both_separators(self):
        for user, key in (("acme/web", KEY), ("acme_web", "L" * 24)):
            h = Harness(self, self.real_store)
            h.connect()
            [challenge] = yield h.lines("AUTH CRAM-MD5")
            self.assertTrue(challenge.startswith(b"334 "))
            decoded = __import__("base64").b64decode(challenge[4:]).decode()
            self.assertRegex(decoded, r"^<[0-9a-f]{32}@" + HOSTNAME.replace(".", r"\.") + ">$")
            replies = yield h.lines(cram_answer(user, key, challenge))
            self.assertEqual(replies, [b"235 Granted for acme/web"])

    @defer.inlineCallbacks
    def test_cram_md5_failures_all_denied(self):
        cases = [("acme/web", "Z" * 24), ("acme/nosuch", KEY), ("nosuch/web", KEY),
                 ("acme/other", KEY)]
        for user, key in cases:
            [challenge] = yield self.lines("AUTH CRAM-MD5")
            self.assertEqual((yield self.lines(cram_answer(user, key, challenge))),
                             [b"535 Denied"], user)
        for malformed in ("nospace", "acmeweb " + "0" * 32, " " + "0" * 32, "acme/ "):
            yield self.lines("AUTH CRAM-MD5")
            self.assertEqual((yield self.lines(b64(malformed))), [b"535 Denied"], malformed)

    @defer.inlineCallbacks
    def test_cancel_and_bad_base64(self):
        replies = yield self.lines("AUTH LOGIN", "*", "AUTH PLAIN", "abc", "AUTH LOGIN",
                                   "dXNlcg==!!", "NOOP")
        self.assertEqual(replies, [b"334 VXNlcm5hbWU6", b"501 Authentication cancelled",
                                   b"334 ", b"501 Invalid base64 data", b"334 VXNlcm5hbWU6",
                                   b"501 Invalid base64 data", b"250 OK"])

    @defer.inlineCallbacks
    def test_auth_syntax_and_unknown_mechanism(self):
        replies = yield self.lines("AUTH", "AUTH XOAUTH2", "AUTH PLAIN a b")
        self.assertEqual(replies, [b"501 Syntax: AUTH mechanism",
                                   b"504 Unrecognized authentication type",
                                   b"501 Syntax: AUTH mechanism"])

    @defer.inlineCallbacks
    def test_second_auth_refused(self):
        yield self.authenticated()
        replies = yield self.lines("AUTH PLAIN " + b64(f"\0x\0{KEY}"))
        self.assertEqual(replies, [b"503 Already authenticated"])

    @defer.inlineCallbacks
    def test_auth_during_transaction_refused(self):
        replies = yield self.lines("EHLO x", "MAIL FROM:<a@good.example>", "AUTH PLAIN " + b64(f"\0x\0{KEY}"))
        self.assertEqual(replies[-1], b"503 AUTH not permitted during a mail transaction")

    @defer.inlineCallbacks
    def test_failure_is_logged_without_secrets(self):
        from twisted.logger import globalLogPublisher, formatEvent
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        secret = "S3cretKeyValue0000000000"
        yield self.lines("AUTH PLAIN " + b64(f"\0x\0{secret}"))
        yield self.lines("AUTH LOGIN", b64("u"), b64(secret))
        self.h.protocol.connectionLost(None)  # no AUTH followed: now they count
        text = [formatEvent(e) for e in events]
        self.assertEqual([t for t in text if "Authentication failure for" in t], [
            f"[{self.h.protocol.session.trace_id}] Authentication failure for 192.0.2.7 "
            + detail for detail in ('(PLAIN, user "x")', '(LOGIN, user "u")')])
        for t in text:
            self.assertNotIn(secret, t)
            self.assertNotIn(b64(secret), t)

    @defer.inlineCallbacks
    def test_last_used_at_recorded(self):
        self.h = Harness(self, self.real_store, idle_timeout=10_000)
        self.h.connect()
        self.h.clock.advance(1234)
        yield self.authenticated()
        found = yield self.real_store.credential_by_key(KEY, "smtp")
        self.assertEqual(found[0].last_used_at, 1234)


class AuthRequiresTLSTests(ProtocolTestBase):
    settings = {"auth_requires_tls": True}

    @defer.inlineCallbacks
    def test_auth_not_offered_nor_accepted(self):
        replies = yield self.lines("EHLO x", "AUTH PLAIN " + b64(f"\0x\0{KEY}"))
        self.assertNotIn(b"AUTH", b"".join(replies[:-1]))
        self.assertEqual(replies[-1], b"530 Must issue a STARTTLS command first")


class EnvelopeTests(ProtocolTestBase):
    @defer.inlineCallbacks
    def test_mail_before_helo(self):
        self.assertEqual((yield self.lines("MAIL FROM:<a@b.example>")), [b"503 EHLO/HELO first please"])

    @defer.inlineCallbacks
    def test_rcpt_before_mail(self):
        replies = yield self.lines("EHLO x", "RCPT TO:<a@b.example>")
        self.assertEqual(replies[-1], b"503 EHLO/HELO and MAIL FROM first please")

    @defer.inlineCallbacks
    def test_data_before_rcpt(self):
        replies = yield self.lines("DATA", "EHLO x", "MAIL FROM:<>", "DATA")
        self.assertEqual([replies[0], replies[-1]],
                         [b"503 HELO/EHLO, MAIL FROM and RCPT TO before sending data"] * 2)

    @defer.inlineCallbacks
    def test_mail_syntax(self):
        yield self.lines("EHLO x")
        for bad in ("MAIL FROM:", "MAIL FROM:<a@b", "MAIL TO:<a@b.example>",
                    "MAIL FROM:<a b@c.example>", "MAIL FROM:<a@b.example> SIZE=abc"):
            self.assertEqual((yield self.lines(bad)), [b"501 Syntax: MAIL FROM:<address>"], bad)

    @defer.inlineCallbacks
    def test_mail_parameters(self):
        yield self.lines("EHLO x")
        ok = ["MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME", "MAIL FROM:<> BODY=7bit",
              "MAIL FROM:<a@b.example> SMTPUTF8", "MAIL FROM:<a@b.example> AUTH=<>",
              "mail from: <a@b.example>", "MAIL FROM:<j\u00f6rg@b\u00fccher.example> SMTPUTF8"]
        for command in ok:
            self.assertEqual((yield self.lines(command)), [b"250 OK"], command)
        self.assertEqual((yield self.lines("MAIL FROM:<a@b.example> SIZE=1048577")),
                         [b"552 Message too large (maximum size 1MB)"])
        for bad in ("MAIL FROM:<a@b.example> BODY=BINARYMIME", "MAIL FROM:<a@b.example> RET=FULL"):
            self.assertEqual((yield self.lines(bad)), [b"555 Unsupported parameter"], bad)

    @defer.inlineCallbacks
    def test_rcpt_checks(self):
        yield self.authenticated()
        yield self.lines("MAIL FROM:<me@good.example>")
        self.assertEqual((yield self.lines("RCPT TO:<>", "RCPT TO:")),
                         [b"501 RCPT TO should not be empty"] * 2)
        self.assertEqual((yield self.lines("RCPT TO:<postmaster>")), [b"501 Invalid RCPT TO"])
        self.assertEqual((yield self.lines("RCPT TO:<a@b.example> NOTIFY=NEVER")),
                         [b"555 Unsupported parameter"])
        self.assertEqual((yield self.lines("RCPT TO:<you@dest.example>")), [b"250 OK"])

    @defer.inlineCallbacks
    def test_unauthenticated_rcpt_refused_and_logged(self):
        replies = yield self.lines("EHLO x", "MAIL FROM:<me@good.example>", "RCPT TO:<a@b.example>")
        self.assertEqual(replies[-1], b"530 Authentication required")
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    @defer.inlineCallbacks
    def test_mail_while_recipients_open(self):
        yield self.authenticated()
        replies = yield self.lines("MAIL FROM:<me@good.example>", "RCPT TO:<a@b.example>",
                                   "MAIL FROM:<me@good.example>", "RSET", "MAIL FROM:<me@good.example>")
        self.assertEqual(replies, [b"250 OK", b"250 OK", b"503 EHLO/HELO first please",
                                   b"250 OK", b"250 OK"])

    @defer.inlineCallbacks
    def test_recipient_limit(self):
        h = Harness(self, self.real_store, max_recipients=2)
        h.connect()
        yield h.lines("EHLO x", "AUTH PLAIN " + b64(f"\0x\0{KEY}"), "MAIL FROM:<me@good.example>")
        replies = yield h.lines("RCPT TO:<a@b.example>", "RCPT TO:<b@b.example>", "RCPT TO:<c@b.example>")
        self.assertEqual(replies, [b"250 OK", b"250 OK", b"452 Too many recipients"])

    @defer.inlineCallbacks
    def test_suspended_server_and_organization(self):
        yield self.authenticated()
        yield self.real_store.update_server("acme", "web", suspended=True)
        replies = yield self.lines("MAIL FROM:<me@good.example>", "RCPT TO:<a@b.example>")
        self.assertEqual(replies[-1], b"535 Mail server has been suspended")
        yield self.real_store.update_server("acme", "web", suspended=False)
        yield self.real_store.set_organization_suspended("acme", True)
        self.assertEqual((yield self.lines("RCPT TO:<a@b.example>")),
                         [b"535 Mail server has been suspended"])
        yield self.real_store.set_organization_suspended("acme", False)
        self.assertEqual((yield self.lines("RCPT TO:<a@b.example>")), [b"250 OK"])

    @defer.inlineCallbacks
    def test_helo_and_rset_keep_authentication(self):
        yield self.authenticated()
        yield self.lines("RSET", "HELO again")
        replies = yield self.lines("MAIL FROM:<me@good.example>", "RCPT TO:<a@b.example>")
        self.assertEqual(replies, [b"250 OK", b"250 OK"])

    @defer.inlineCallbacks
    def test_store_outage_is_451_and_session_survives(self):
        yield self.authenticated()
        yield self.real_store.close()
        replies = yield self.lines("MAIL FROM:<me@good.example>", "RCPT TO:<a@b.example>", "NOOP")
        self.assertEqual(replies, [b"250 OK", b"451 Temporary failure, please try again later",
                                   b"250 OK"])


class IPAuthenticationTests(ProtocolTestBase):
    client_ip = "198.51.100.9"

    @defer.inlineCallbacks
    def test_network_credential_authorises(self):
        replies = yield self.lines("EHLO x", "MAIL FROM:<a@b.example>", "RCPT TO:<r@dest.example>")
        self.assertEqual(replies[-1], b"250 OK")
        self.assertEqual(self.h.protocol.avatar.identity.server.full_name, "acme/other")
        found = yield self.real_store.credential_by_id(self.tenancy["ip_credential"].id)
        self.assertIsNotNone(found[0].last_used_at)

    @defer.inlineCallbacks
    def test_most_specific_network_wins(self):
        yield self.real_store.add_credential(("acme", "web"), "smtp-ip", "198.51.100.8/29")
        yield self.lines("EHLO x", "MAIL FROM:<a@b.example>", "RCPT TO:<r@dest.example>")
        self.assertEqual(self.h.protocol.avatar.identity.server.full_name, "acme/web")

    @defer.inlineCallbacks
    def test_auth_wins_over_ip(self):
        replies = yield self.lines("EHLO x", "AUTH PLAIN " + b64(f"\0x\0{KEY}"),
                                   "MAIL FROM:<a@b.example>", "RCPT TO:<r@dest.example>")
        self.assertEqual(replies[-3:], [b"235 Granted for acme/web", b"250 OK", b"250 OK"])
        self.assertEqual(self.h.protocol.avatar.identity.server.full_name, "acme/web")


class MappedIPv4Tests(ProtocolTestBase):
    client_ip = "::ffff:198.51.100.20"

    @defer.inlineCallbacks
    def test_ipv4_network_matches_mapped_address(self):
        replies = yield self.lines("EHLO x", "MAIL FROM:<a@b.example>", "RCPT TO:<r@dest.example>")
        self.assertEqual(replies[-1], b"250 OK")


class IPv6Tests(ProtocolTestBase):
    client_ip = "2001:db8::5"

    @defer.inlineCallbacks
    def test_ipv6_network(self):
        replies = yield self.lines("EHLO x", "MAIL FROM:<a@b.example>", "RCPT TO:<r@dest.example>")
        self.assertEqual(replies[-1], b"530 Authentication required")
        yield self.real_store.add_credential(("acme", "web"), "smtp-ip", "2001:db8::/64")
        replies = yield self.lines("RCPT TO:<r@dest.example>")
        self.assertEqual(replies, [b"250 OK"])


PostgresConnectionTests = on_postgres(ConnectionTests)
PostgresAuthTests = on_postgres(AuthTests)
PostgresEnvelopeTests = on_postgres(EnvelopeTests)
PostgresIPAuthenticationTests = on_postgres(IPAuthenticationTests)
PostgresMappedIPv4Tests = on_postgres(MappedIPv4Tests)
PostgresIPv6Tests = on_postgres(IPv6Tests)
PostgresShutdownTests = on_postgres(ShutdownTests)
