"""The SMTP protocol against a portal and an avatar held by hand.

As Twisted's own SMTP tests do, the portal here is a fake whose C{login}
records its arguments and returns a Deferred the test fires or fails itself,
and the avatar is a fake L{ISubmissionDelivery} whose recipient checks and
messages the test also settles. That makes the moments between a command and
its answer visible, which a real store hides. Covered:

  - pipelined commands after AUTH wait, unanswered, until the login is over,
    then are answered in order;
  - what the portal receives: the PLAIN and LOGIN key, the CRAM-MD5
    organization, server, challenge and digest, the client address for a RCPT
    without AUTH, the session as the mind, and no secret in any repr;
  - a refused login (C{535 Invalid credential}, C{535 Denied}, C{530
    Authentication required}) and a broken one (C{451}, logged, the
    connection still usable);
  - a connection lost (or timed out) while a login or a recipient check is
    pending: nothing is written, a late avatar is logged out at once;
  - the avatar's logout at the end of the connection and when the session
    re-authenticates (after a client-address login, and after STARTTLS);
  - the recipient check and the message's C{finish} held by the test.
"""
from __future__ import annotations

import base64
import hashlib
import hmac

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailgw.auth.checkers import Identity
from mailgw.auth.credentials import (
    ClientAddress, IClientAddress, ICramMD5Credentials, IKeyCredentials,
)
from mailgw.interfaces import ISubmissionDelivery, StoreUnavailable
from mailgw.model import Credential, Server
from mailgw.smtp import replies
from mailgw.smtp.factory import ProtocolSettings, SubmissionFactory

HOSTNAME = "mx.portal.test"
KEY = "Pk-3xampleKey-0123456789"
TEMPORARY_FAILURE = b"451 Temporary failure, please try again later"


def b64(data) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


class LoginAttempt:
    """One call of L{FakePortal.login}: its arguments and the Deferred the
    test settles."""

    def __init__(self, credentials, mind, interfaces):
        self.credentials = credentials
        self.mind = mind
        self.interfaces = interfaces
        self.deferred = defer.Deferred()

    def succeed(self, avatar):
        """Fire as a real portal does: C{(interface, avatar, logout)}."""
        self.deferred.callback((ISubmissionDelivery, avatar, avatar.logout))

    def fail(self, exception):
        self.deferred.errback(Failure(exception))

    def outcome(self):
        """What is left at the end of the Deferred's chain once the protocol's
        callbacks have run: C{[None]} when they swallowed everything."""
        left = []
        self.deferred.addBoth(left.append)
        return left


class FakePortal:
    """Records every login; nothing is decided until the test says so."""

    def __init__(self):
        self.attempts = []

    def login(self, credentials, mind, *interfaces):
        attempt = LoginAttempt(credentials, mind, interfaces)
        self.attempts.append(attempt)
        return attempt.deferred


class FakeMessage:
    """The object C{open_message} returns; C{finish} is held by the test."""

    def __init__(self, mail_from, recipients):
        self.mail_from = mail_from
        self.recipients = list(recipients)
        self.chunks = []
        self.aborted = False
        self.finished = None

    def write(self, chunk):
        self.chunks.append(chunk)

    def abort(self):
        self.aborted = True

    def finish(self):
        self.finished = defer.Deferred()
        return self.finished


@implementer(ISubmissionDelivery)
class FakeDelivery:
    """An avatar for one tenant server whose answers the test gives."""

    def __init__(self, organization="acme", server="web", mechanism="PLAIN"):
        self.identity = Identity(
            Credential(id=7, server_id=3, type="smtp", key="not-the-test-key"),
            Server(id=3, organization_id=1, organization_permalink=organization,
                   permalink=server, name=server.title()),
            mechanism)
        #: C{(address, Deferred)} per C{check_recipient} call
        self.checks = []
        self.messages = []
        self.logouts = 0

    def check_recipient(self, address):
        d = defer.Deferred()
        self.checks.append((address, d))
        return d

    def open_message(self, mail_from, recipients):
        message = FakeMessage(mail_from, recipients)
        self.messages.append(message)
        return message

    def logout(self):
        self.logouts += 1


@implementer(ITLSTransport)
class StartTLSTransport(StringTransport):
    """A StringTransport that accepts STARTTLS: it records the options, and
    later bytes stand for what TLS decrypted."""

    tls_options = None

    def startTLS(self, options, normal=True):
        self.tls_options = options


class FakeTLSOptions:
    def server_options(self):
        return "server-tls-options"


class PortalTestCase(unittest.TestCase):
    """One connection from C{client_ip} over a C{transport_class}, its
    factory holding a L{FakePortal} and a Clock."""

    client_ip = "192.0.2.7"
    transport_class = StringTransport
    tls_options = None

    def setUp(self):
        self.portal = FakePortal()
        self.clock = Clock()
        self.factory = SubmissionFactory(ProtocolSettings(hostname=HOSTNAME), self.portal,
                                         self.clock, self.tls_options)
        address = IPv6Address if ":" in self.client_ip else IPv4Address
        peer = address("TCP", self.client_ip, 40000)
        self.transport = self.transport_class(peerAddress=peer)
        self.protocol = self.factory.buildProtocol(peer)
        self.protocol.makeConnection(self.transport)
        self.addCleanup(self.end_connection)
        [greeting] = self.take()
        self.assertTrue(greeting.startswith(b"220 "), greeting)

    def end_connection(self):
        """Lose the connection unless the test already did (connectionLost
        fires C{closed})."""
        if not self.protocol.closed.called:
            self.protocol.connectionLost(Failure(ConnectionDone()))

    def take(self):
        """The reply lines written since the last take."""
        out = self.transport.value()
        self.transport.clear()
        return out.split(b"\r\n")[:-1]

    def send(self, *lines):
        """Write the lines (CRLF added) in one segment, as a pipelining client
        does; return the reply lines written so far."""
        data = b"".join((line.encode("utf-8") if isinstance(line, str) else line) + b"\r\n"
                        for line in lines)
        self.protocol.dataReceived(data)
        return self.take()

    def avatar(self, *args, **kwargs):
        avatar = FakeDelivery(*args, **kwargs)
        verifyObject(ISubmissionDelivery, avatar)
        return avatar

    def start_login(self, mechanism, key=KEY):
        """Run the exchange of C{mechanism} up to the portal; the pending
        attempt, nothing having been answered to the last response."""
        before = len(self.portal.attempts)
        if mechanism == "PLAIN":
            self.assertEqual(self.send("AUTH PLAIN " + b64(f"\0user\0{key}")), [])
        elif mechanism == "LOGIN":
            self.assertEqual(self.send("AUTH LOGIN"), [b"334 VXNlcm5hbWU6"])
            self.assertEqual(self.send(b64("user")), [b"334 UGFzc3dvcmQ6"])
            self.assertEqual(self.send(b64(key)), [])
        else:
            [line] = self.send("AUTH CRAM-MD5")
            challenge = base64.b64decode(line[len(b"334 "):])
            digest = hmac.new(key.encode(), challenge, hashlib.md5).hexdigest()
            self.assertEqual(self.send(b64(f"acme/web {digest}")), [])
        self.assertEqual(len(self.portal.attempts), before + 1)
        return self.portal.attempts[-1]

    def authenticate(self, mechanism="PLAIN"):
        """A completed login; the avatar."""
        avatar = self.avatar(mechanism=mechanism)
        self.start_login(mechanism).succeed(avatar)
        self.assertEqual(self.take(), [b"235 Granted for acme/web"])
        return avatar

    def lose_connection(self):
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.transport.clear()


class FakesTests(PortalTestCase):
    def test_fake_avatar_provides_the_interface(self):
        """The fake avatar has every method and attribute the protocol may
        use of a real one; were the interface to grow, this would fail."""
        self.assertTrue(verifyObject(ISubmissionDelivery, FakeDelivery()))


class PipeliningTests(PortalTestCase):
    def test_commands_after_auth_wait_for_the_login(self):
        """MAIL, RCPT and NOOP written with AUTH are not read until the login
        is over: they are then answered in order, RCPT itself waiting for the
        recipient check."""
        self.assertEqual(self.send("EHLO client.example")[-1], b"250 AUTH CRAM-MD5 PLAIN LOGIN")
        answered = self.send("AUTH PLAIN " + b64(f"\0user\0{KEY}"),
                             "MAIL FROM:<me@good.example>", "RCPT TO:<you@dest.example>", "NOOP")
        self.assertEqual(answered, [])
        [attempt] = self.portal.attempts
        self.assertIsNone(self.protocol.mail_from)

        avatar = self.avatar()
        attempt.succeed(avatar)
        self.assertEqual(self.take(), [b"235 Granted for acme/web", b"250 OK"])
        [(address, check)] = avatar.checks
        self.assertEqual(str(address), "you@dest.example")

        check.callback(None)
        self.assertEqual(self.take(), [b"250 OK", b"250 OK"])
        # RCPT used the session's avatar: no second login by client address.
        self.assertEqual(len(self.portal.attempts), 1)
        self.assertEqual(self.protocol.recipients, ["you@dest.example"])

    def test_input_arriving_while_the_login_is_pending_also_waits(self):
        """Bytes of a later segment are queued behind the pending AUTH too."""
        attempt = self.start_login("PLAIN")
        self.assertEqual(self.send("NOOP", "HELO client.example"), [])
        attempt.succeed(self.avatar())
        self.assertEqual(self.take(), [b"235 Granted for acme/web", b"250 OK",
                                       f"250 {HOSTNAME}".encode()])

    def test_refused_auth_then_pipelined_rcpt_tries_the_client_address(self):
        """After a refused AUTH the pipelined RCPT has no avatar, so it logs in
        by client address, and waits for that login in turn."""
        self.send("EHLO client.example")
        self.assertEqual(self.send("AUTH PLAIN " + b64(f"\0u\0{KEY}"), "MAIL FROM:<me@good.example>",
                                   "RCPT TO:<you@dest.example>", "NOOP"), [])
        self.portal.attempts[0].fail(UnauthorizedLogin())
        self.assertEqual(self.take(), [b"535 Invalid credential", b"250 OK"])
        self.assertEqual(len(self.portal.attempts), 2)
        self.assertIsInstance(self.portal.attempts[1].credentials, ClientAddress)
        self.portal.attempts[1].fail(UnauthorizedLogin())
        self.assertEqual(self.take(), [b"530 Authentication required", b"250 OK"])

    def test_internal_error_then_pipelined_commands(self):
        """A broken login is answered 451 and the pipelined commands behind it
        are still answered, in order."""
        self.send("EHLO client.example")
        self.assertEqual(self.send("AUTH PLAIN " + b64(f"\0u\0{KEY}"), "NOOP", "RSET"), [])
        self.portal.attempts[0].fail(RuntimeError("checker broke"))
        self.assertEqual(self.take(), [TEMPORARY_FAILURE, b"250 OK", b"250 OK"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class CredentialsTests(PortalTestCase):
    def assertLoginArguments(self, attempt):
        # The session is the mind: the realm builds the avatar for it.
        self.assertIs(attempt.mind, self.protocol.session)
        self.assertEqual(attempt.interfaces, (ISubmissionDelivery,))

    def assertNoSecretShown(self, credentials, *secrets):
        for shown in (repr(credentials), str(credentials)):
            for secret in secrets:
                self.assertNotIn(secret, shown)

    def test_plain_gives_the_key(self):
        attempt = self.start_login("PLAIN")
        credentials = attempt.credentials
        self.assertTrue(IKeyCredentials.providedBy(credentials))
        self.assertEqual(credentials.mechanism, "PLAIN")
        self.assertEqual(credentials.key, KEY)
        self.assertLoginArguments(attempt)
        self.assertNoSecretShown(credentials, KEY)

    def test_plain_ignores_the_user_names_and_decodes_utf8(self):
        """The authorization and authentication identities are not the key;
        a UTF-8 key reaches the portal as text."""
        key = "cl\u00e9-\u043a\u043b\u044e\u0447-0123456789"
        self.assertEqual(self.send("AUTH PLAIN " + b64(f"admin\0someone\0{key}")), [])
        [attempt] = self.portal.attempts
        self.assertEqual(attempt.credentials.key, key)
        self.assertNoSecretShown(attempt.credentials, key, "someone", "admin")

    def test_plain_after_an_empty_challenge(self):
        self.assertEqual(self.send("AUTH PLAIN"), [b"334 "])
        self.assertEqual(self.portal.attempts, [])
        self.assertEqual(self.send(b64(f"\0user\0{KEY}")), [])
        [attempt] = self.portal.attempts
        self.assertEqual((attempt.credentials.mechanism, attempt.credentials.key), ("PLAIN", KEY))
        self.assertLoginArguments(attempt)

    def test_login_gives_the_key_after_two_prompts(self):
        self.assertEqual(self.send("AUTH LOGIN"), [b"334 VXNlcm5hbWU6"])
        self.assertEqual(self.send(b64("som-smtp-user")), [b"334 UGFzc3dvcmQ6"])
        # Nothing is asked of the portal before the password is in.
        self.assertEqual(self.portal.attempts, [])
        self.assertEqual(self.send(b64(KEY)), [])
        [attempt] = self.portal.attempts
        credentials = attempt.credentials
        self.assertTrue(IKeyCredentials.providedBy(credentials))
        self.assertEqual(credentials.mechanism, "LOGIN")
        self.assertEqual(credentials.key, KEY)
        self.assertLoginArguments(attempt)
        self.assertNoSecretShown(credentials, KEY)

    def test_cram_md5_names_the_server_and_carries_the_digest(self):
        for user in ("acme/web", "acme_web"):
            [line] = self.send("AUTH CRAM-MD5")
            self.assertTrue(line.startswith(b"334 "), line)
            challenge = base64.b64decode(line[4:])
            self.assertRegex(challenge.decode(), r"^<[0-9a-f]{32}@mx\.portal\.test>$")
            digest = hmac.new(KEY.encode(), challenge, hashlib.md5).hexdigest()
            # The checker compares lower-case hex, whatever case the client used.
            self.assertEqual(self.send(b64(f"{user} {digest.upper()}")), [])
            attempt = self.portal.attempts[-1]
            credentials = attempt.credentials
            self.assertTrue(ICramMD5Credentials.providedBy(credentials))
            self.assertEqual(credentials.mechanism, "CRAM-MD5")
            self.assertEqual((credentials.organization, credentials.server), ("acme", "web"))
            self.assertEqual(credentials.challenge, challenge)
            self.assertEqual(credentials.digest, digest)
            self.assertLoginArguments(attempt)
            self.assertNoSecretShown(credentials, KEY, digest, digest.upper())
            attempt.fail(UnauthorizedLogin())
            self.assertEqual(self.take(), [b"535 Denied"])
        self.assertEqual(len(self.portal.attempts), 2)

    def test_each_cram_md5_challenge_is_new(self):
        challenges = set()
        for _ in range(3):
            [line] = self.send("AUTH CRAM-MD5")
            challenges.add(line)
            self.assertEqual(self.send("*"), [b"501 Authentication cancelled"])
        self.assertEqual(len(challenges), 3)
        self.assertEqual(self.portal.attempts, [])


class LoginOutcomeTests(PortalTestCase):
    def test_granted(self):
        """The reply names the avatar's server; the avatar serves the session."""
        avatar = self.avatar(organization="globex", server="mailer")
        self.start_login("PLAIN").succeed(avatar)
        self.assertEqual(self.take(), [b"235 Granted for globex/mailer"])
        self.assertIs(self.protocol.avatar, avatar)
        self.assertEqual(self.protocol.session.mechanism, "PLAIN")
        self.assertEqual(self.send("AUTH PLAIN " + b64(f"\0u\0{KEY}")),
                         [b"503 Already authenticated"])

    def test_unauthorized_login(self):
        """A refused login is 535, worded by mechanism; the session stays
        unauthenticated and may try again."""
        expected = {"PLAIN": b"535 Invalid credential", "LOGIN": b"535 Invalid credential",
                    "CRAM-MD5": b"535 Denied"}
        for mechanism, reply in expected.items():
            self.start_login(mechanism).fail(UnauthorizedLogin())
            self.assertEqual(self.take(), [reply], mechanism)
            self.assertIsNone(self.protocol.avatar)
            self.assertIsNone(self.protocol.session.mechanism)
        self.assertEqual(self.send("NOOP"), [b"250 OK"])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.authenticate("PLAIN")

    def test_other_failure_is_a_logged_temporary_failure(self):
        """Any other exception is the gateway's fault, not the client's: 451,
        logged, and the connection goes on."""
        for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5"):
            self.start_login(mechanism).fail(RuntimeError(f"{mechanism} checker broke"))
            self.assertEqual(self.take(), [TEMPORARY_FAILURE], mechanism)
            self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1, mechanism)
            self.assertIsNone(self.protocol.avatar)
            self.assertEqual(self.send("NOOP"), [b"250 OK"])
        self.assertFalse(self.transport.disconnecting)
        self.authenticate("LOGIN")

    def test_unhandled_credentials_is_not_the_clients_fault(self):
        """A portal without a checker for the credentials is misconfigured:
        451 and logged, not 535."""
        self.start_login("PLAIN").fail(UnhandledCredentials("no checker"))
        self.assertEqual(self.take(), [TEMPORARY_FAILURE])
        self.assertEqual(len(self.flushLoggedErrors(UnhandledCredentials)), 1)

    def test_store_unavailable_is_451_without_a_traceback(self):
        """An outage is expected weather: 451, logged as a line, not as an
        internal error."""
        self.start_login("PLAIN").fail(StoreUnavailable("database gone"))
        self.assertEqual(self.take(), [TEMPORARY_FAILURE])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.send("NOOP"), [b"250 OK"])

    def test_idle_timeout_while_the_login_is_pending(self):
        """A portal that never answers does not hold the connection for ever:
        the idle timer, started by the last bytes received, still runs."""
        attempt = self.start_login("PLAIN")
        self.clock.advance(299)
        self.assertEqual(self.take(), [])
        self.clock.advance(1)
        self.assertEqual(self.take(), [f"421 {HOSTNAME} Timeout, closing connection".encode()])
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(attempt.deferred.called)


class ClientAddressTests(PortalTestCase):
    def start_rcpt(self):
        """EHLO, MAIL, RCPT and NOOP in one segment; the pending client-address
        login the RCPT started."""
        answered = self.send("EHLO client.example", "MAIL FROM:<me@good.example>",
                             "RCPT TO:<you@dest.example>", "NOOP")
        self.assertEqual(answered[-1], b"250 OK")  # MAIL's; RCPT and NOOP wait
        self.assertEqual(answered[-2], b"250 AUTH CRAM-MD5 PLAIN LOGIN")
        [attempt] = self.portal.attempts
        return attempt

    def test_rcpt_without_auth_logs_in_by_client_address(self):
        attempt = self.start_rcpt()
        credentials = attempt.credentials
        self.assertTrue(IClientAddress.providedBy(credentials))
        self.assertEqual(credentials.address, self.transport.getPeer().host)
        self.assertEqual(credentials.address, self.client_ip)
        self.assertIs(attempt.mind, self.protocol.session)
        self.assertEqual(attempt.interfaces, (ISubmissionDelivery,))

    def test_refused_is_530_and_the_transaction_stays(self):
        self.start_rcpt().fail(UnauthorizedLogin())
        self.assertEqual(self.take(), [b"530 Authentication required", b"250 OK"])
        self.assertIsNone(self.protocol.avatar)
        self.assertEqual(self.flushLoggedErrors(), [])
        # MAIL still holds, and the next RCPT asks the portal again.
        self.assertEqual(self.protocol.mail_from, "me@good.example")
        self.assertEqual(self.send("RCPT TO:<other@dest.example>"), [])
        self.assertEqual(len(self.portal.attempts), 2)

    def test_granted_binds_the_avatar_for_the_session(self):
        avatar = self.avatar(mechanism="IP")
        self.start_rcpt().succeed(avatar)
        self.assertEqual(self.take(), [])  # the recipient check is still pending
        [(address, check)] = avatar.checks
        self.assertEqual(str(address), "you@dest.example")
        check.callback(None)
        self.assertEqual(self.take(), [b"250 OK", b"250 OK"])
        self.assertIs(self.protocol.avatar, avatar)
        self.assertEqual(self.protocol.session.mechanism, "IP")
        self.send("RCPT TO:<second@dest.example>")
        self.assertEqual(len(self.portal.attempts), 1)
        self.assertEqual(len(avatar.checks), 2)

    def test_other_failure_is_451_logged_and_ends_the_transaction(self):
        self.start_rcpt().fail(RuntimeError("address checker broke"))
        self.assertEqual(self.take(), [TEMPORARY_FAILURE, b"250 OK"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIsNone(self.protocol.mail_from)
        self.assertEqual(self.send("RCPT TO:<you@dest.example>"),
                         [b"503 EHLO/HELO and MAIL FROM first please"])


class IPv6ClientAddressTests(ClientAddressTests):
    client_ip = "2001:db8::5"


class ConnectionLostTests(PortalTestCase):
    """The client goes away while the portal is still deciding: whatever the
    portal says afterwards is written nowhere and raises nothing."""

    def assertQuietAfterwards(self, attempt, settle):
        left = attempt.outcome()
        settle()
        self.assertEqual(self.transport.value(), b"")
        # The protocol's callbacks consumed the result: no failure is left
        # at the end of the chain to surface as an unhandled error.
        self.assertEqual(left, [None])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_granted_after_the_connection_is_gone(self):
        attempt = self.start_login("PLAIN")
        self.lose_connection()
        self.assertQuietAfterwards(attempt, lambda: attempt.succeed(self.avatar()))
        self.assertIsNone(self.protocol.avatar)


    def test_late_avatar_is_logged_out(self):
        """An avatar handed over after the end is never used; it must still be
        logged out, as the portal asks of whoever receives an avatar."""
        attempt = self.start_login("PLAIN")
        self.lose_connection()
        avatar = self.avatar()
        attempt.succeed(avatar)
        self.assertEqual(avatar.logouts, 1)


    def refused_after_the_end(self, mechanism):
        attempt = self.start_login(mechanism)
        self.lose_connection()
        self.assertQuietAfterwards(attempt, lambda: attempt.fail(UnauthorizedLogin()))

    def test_plain_refused_after_the_connection_is_gone(self):
        self.refused_after_the_end("PLAIN")


    def test_login_refused_after_the_connection_is_gone(self):
        self.refused_after_the_end("LOGIN")


    def test_cram_md5_refused_after_the_connection_is_gone(self):
        self.refused_after_the_end("CRAM-MD5")


    def test_granted_after_the_idle_timeout(self):
        """After the 421 of the idle timeout nothing more is written, even
        before the transport has reported the connection lost."""
        attempt = self.start_login("PLAIN")
        self.clock.advance(300)
        self.take()
        avatar = self.avatar()
        attempt.succeed(avatar)
        self.assertEqual(self.take(), [])
        self.lose_connection()
        self.assertEqual(avatar.logouts, 1)


    def test_broken_after_the_connection_is_gone(self):
        attempt = self.start_login("LOGIN")
        self.lose_connection()
        self.assertQuietAfterwards(attempt, lambda: attempt.fail(RuntimeError("late")))

    def test_client_address_refused_after_the_connection_is_gone(self):
        self.send("EHLO client.example", "MAIL FROM:<me@good.example>",
                  "RCPT TO:<you@dest.example>")
        [attempt] = self.portal.attempts
        self.lose_connection()
        self.assertQuietAfterwards(attempt, lambda: attempt.fail(UnauthorizedLogin()))

    def test_client_address_granted_after_the_connection_is_gone(self):
        self.send("EHLO client.example", "MAIL FROM:<me@good.example>",
                  "RCPT TO:<you@dest.example>")
        [attempt] = self.portal.attempts
        self.lose_connection()
        avatar = self.avatar(mechanism="IP")
        attempt.succeed(avatar)
        # Settle any recipient check that was started, so that a reply it
        # would write shows up below.
        for _, check in list(avatar.checks):
            check.callback(None)
        self.assertEqual(self.transport.value(), b"")
        # Nobody is left to send to: no check, and the unused avatar logged out.
        self.assertEqual(avatar.checks, [])
        self.assertEqual(avatar.logouts, 1)


    def test_recipient_check_after_the_connection_is_gone(self):
        avatar = self.authenticate()
        self.send("HELO client.example", "MAIL FROM:<me@good.example>",
                  "RCPT TO:<you@dest.example>")
        [(_, check)] = avatar.checks
        self.lose_connection()
        check.callback(None)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.protocol.recipients, [])


    def test_recipient_refused_after_the_connection_is_gone(self):
        avatar = self.authenticate()
        self.send("HELO client.example", "MAIL FROM:<me@good.example>",
                  "RCPT TO:<you@dest.example>")
        [(_, check)] = avatar.checks
        self.lose_connection()
        check.errback(Failure(replies.SERVER_SUSPENDED))
        self.assertEqual(self.transport.value(), b"")


class LogoutTests(PortalTestCase):
    def test_logout_when_the_connection_ends(self):
        avatar = self.authenticate()
        self.assertEqual(self.send("NOOP"), [b"250 OK"])
        self.assertEqual(avatar.logouts, 0)
        self.lose_connection()
        self.assertEqual(avatar.logouts, 1)

    def test_logout_once_after_quit(self):
        avatar = self.authenticate()
        self.assertEqual(self.send("QUIT"), [b"221 Closing Connection"])
        self.assertTrue(self.transport.disconnecting)
        self.lose_connection()
        self.assertEqual(avatar.logouts, 1)

    def test_logout_of_a_client_address_avatar(self):
        avatar = self.avatar(mechanism="IP")
        self.send("EHLO client.example", "MAIL FROM:<me@good.example>", "RCPT TO:<a@dest.example>")
        self.portal.attempts[0].succeed(avatar)
        avatar.checks[0][1].callback(None)
        self.lose_connection()
        self.assertEqual(avatar.logouts, 1)

    def test_previous_avatar_logged_out_when_auth_replaces_the_address_login(self):
        """AUTH after a client-address login replaces that avatar; the old one
        is logged out only once the new login has succeeded."""
        by_address = self.avatar(mechanism="IP")
        self.send("EHLO client.example", "MAIL FROM:<me@good.example>", "RCPT TO:<a@dest.example>")
        self.portal.attempts[0].succeed(by_address)
        by_address.checks[0][1].callback(None)
        self.assertEqual(self.take(), [b"250 OK"])
        # AUTH is refused inside a transaction; RSET ends it.
        self.assertEqual(self.send("RSET"), [b"250 OK"])
        attempt = self.start_login("PLAIN")
        self.assertEqual(by_address.logouts, 0)
        by_key = self.avatar()
        attempt.succeed(by_key)
        self.assertEqual(self.take(), [b"235 Granted for acme/web"])
        self.assertEqual((by_address.logouts, by_key.logouts), (1, 0))
        self.assertIs(self.protocol.avatar, by_key)
        self.lose_connection()
        self.assertEqual((by_address.logouts, by_key.logouts), (1, 1))

    def test_failed_auth_keeps_the_address_avatar(self):
        by_address = self.avatar(mechanism="IP")
        self.send("EHLO client.example", "MAIL FROM:<me@good.example>", "RCPT TO:<a@dest.example>")
        self.portal.attempts[0].succeed(by_address)
        by_address.checks[0][1].callback(None)
        self.send("RSET")
        self.start_login("PLAIN").fail(UnauthorizedLogin())
        self.assertEqual(self.take(), [b"535 Invalid credential"])
        self.assertIs(self.protocol.avatar, by_address)
        self.assertEqual(by_address.logouts, 0)


class StartTLSLogoutTests(PortalTestCase):
    """STARTTLS over a StringTransport that records C{startTLS}: enough to see
    the session start over, with no real handshake."""

    transport_class = StartTLSTransport
    tls_options = FakeTLSOptions()

    def test_previous_avatar_logged_out_on_starttls_and_reauthentication(self):
        plaintext = self.authenticate()
        self.assertEqual(self.send("STARTTLS"), [b"220 Ready to start TLS"])
        self.assertEqual(self.transport.tls_options, "server-tls-options")
        # The identity proven in the clear does not carry into TLS.
        self.assertEqual(plaintext.logouts, 1)
        self.assertIsNone(self.protocol.avatar)

        self.send("EHLO client.example")
        attempt = self.start_login("PLAIN")
        self.assertIs(attempt.mind, self.protocol.session)
        self.assertTrue(attempt.mind.tls)
        over_tls = self.avatar()
        attempt.succeed(over_tls)
        self.assertEqual(self.take(), [b"235 Granted for acme/web"])
        self.assertEqual((plaintext.logouts, over_tls.logouts), (1, 0))
        self.lose_connection()
        self.assertEqual((plaintext.logouts, over_tls.logouts), (1, 1))


class MessageTests(PortalTestCase):
    """C{open_message} and the message's C{finish}, held by the test."""

    def open_transaction(self):
        avatar = self.authenticate()
        self.assertEqual(self.send("HELO client.example", "MAIL FROM:<me@good.example>",
                                   "RCPT TO:<you@dest.example>"),
                         [f"250 {HOSTNAME}".encode(), b"250 OK"])
        avatar.checks[0][1].callback(None)
        self.assertEqual(self.take(), [b"250 OK"])
        self.assertEqual(self.send("DATA"), [b"354 Go ahead"])
        [message] = avatar.messages
        self.assertEqual((message.mail_from, message.recipients),
                         ("me@good.example", ["you@dest.example"]))
        return message

    def test_final_reply_waits_for_finish(self):
        message = self.open_transaction()
        self.assertEqual(self.send("Subject: hi", "", "..dot", ".", "NOOP"), [])
        self.assertEqual(b"".join(message.chunks), b"Subject: hi\r\n\r\n.dot\r\n")
        message.finished.callback("QUEUEID1")
        self.assertEqual(self.take(), [b"250 OK: queued as QUEUEID1", b"250 OK"])
        self.assertFalse(message.aborted)
        self.assertIsNone(self.protocol.mail_from)

    def test_refusal_is_sent_as_it_is(self):
        message = self.open_transaction()
        self.send("Subject: hi", "", "body", ".", "NOOP")
        message.finished.errback(Failure(replies.SENDER_NOT_VALID))
        self.assertEqual(self.take(), [b"530 From/Sender name is not valid", b"250 OK"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_recipient_refusal_is_sent_as_it_is(self):
        avatar = self.authenticate()
        self.assertEqual(self.send("HELO client.example", "MAIL FROM:<me@good.example>",
                                   "RCPT TO:<you@dest.example>", "NOOP"),
                         [f"250 {HOSTNAME}".encode(), b"250 OK"])
        avatar.checks[0][1].errback(Failure(replies.SERVER_SUSPENDED))
        self.assertEqual(self.take(), [b"535 Mail server has been suspended", b"250 OK"])
        self.assertEqual(self.protocol.recipients, [])

    def test_connection_lost_during_data_aborts_the_message(self):
        message = self.open_transaction()
        self.send("Subject: hi", "", "partial body")
        self.lose_connection()
        self.assertTrue(message.aborted)
