"""The SMTP submission protocol: framing, the state machine of the wire
contract, and the pipelined command queue.

Bytes collect in one buffer and are taken out only when the previous command
has been answered, so that pipelined commands are answered in order even while
a look-up is pending, and nothing sent after DATA, STARTTLS or AUTH is read as
a command by mistake. Policy lives in the delivery avatar (reached through the
portal); this module only speaks SMTP.
"""
from __future__ import annotations

import base64
import binascii

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailgw.address import AddressError, parse_path, split_mail_argument
from mailgw.auth.guard import LockedOut
from mailgw.auth.credentials import (
    ClientAddress, CramMD5Credentials, LoginCredentials, MalformedResponse,
    PlainCredentials,
)
from mailgw.interfaces import ISubmissionDelivery, StoreUnavailable
from mailgw.model import generate_token
from mailgw.smtp import replies
from mailgw.smtp.body import BodyDecoder
from mailgw.smtp.replies import SMTPReply
from mailgw.smtp.session import Session
from mailgw.smtp.tlslayer import start_tls

log = Logger()

MAX_LINE = 4096
#: stop reading from a client whose unprocessed input exceeds this
MAX_BUFFER = 256 * 1024

COMMAND, AUTH, DATA, CLOSED = "command", "auth", "data", "closed"
MECHANISMS = ("CRAM-MD5", "PLAIN", "LOGIN")
BODY_TYPES = ("7BIT", "8BITMIME")


@implementer(IHandshakeListener)
class SubmissionProtocol(Protocol):
    """One SMTP submission session (the wire contract, C{docs/smtp.md})."""

    # Thousands of these live at once: slots keep each one small (a plain
    # instance dict of this many attributes would cost some 1.5 kB more).
    __slots__ = (
        "_admitted", "_attempts", "_bare_lf_logged", "_body", "_buffer", "_busy",
        "_challenger", "_clock", "_data_bytes", "_data_started", "_discarding", "_draining",
        "_handshake_timer", "_logout", "_message", "_mode", "_paused", "_pumping",
        "_recipient_keys", "_session_timer", "_timeout_reason", "_timer", "_deadline", "avatar",
        "client_ip", "closed", "factory", "mail_from", "metrics", "recipients", "session",
        "settings",
    )

    def __init__(self, factory):
        self.factory = factory
        self.settings = factory.settings
        self.metrics = factory.metrics
        self._clock = factory.clock
        self._buffer = bytearray()
        self._mode = COMMAND
        self._busy = self._pumping = self._discarding = self._paused = False
        self._timer = self._handshake_timer = self._session_timer = None
        self._timeout_reason = "idle"
        self._deadline = 0.0
        self._data_started = 0.0
        self._data_bytes = 0
        self._bare_lf_logged = False
        self._draining = False
        #: fires when the connection is gone (for a graceful shutdown)
        self.closed = defer.Deferred()
        self.session = None
        self._attempts = None
        self.avatar = None
        self._logout = None
        self._challenger = None
        self._reset_transaction()

    # -- connection ---------------------------------------------------------

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.client_ip = getattr(peer, "host", "0.0.0.0")
        implicit = ISSLTransport.providedBy(self.transport)
        trace_id = generate_token(8)
        #: failed AUTH attempts, forgiven if this connection authenticates
        self._attempts = self.factory.guard.attempts(self.client_ip, trace_id)
        self.session = Session(trace_id, self.settings.hostname, self.client_ip,
                               tls=implicit, attempts=self._attempts)
        refused = self.factory.admit(self)
        reply = replies.too_many_connections(self.settings.hostname)
        if refused is None and not self.factory.ready:
            refused, reply = "store not open yet", replies.not_available(self.settings.hostname)
        if refused is not None:
            self.metrics.refused_connections.labels(refused).inc()
            self._log("connection from {ip} refused: {why}", ip=self.client_ip, why=refused)
            self._reply(reply)
            self._close()
            return
        if self._throttled():
            self.metrics.refused_connections.labels("locked out").inc()
            return
        self.metrics.connections.inc()
        if implicit:
            self._start_handshake_timer()
        if self.settings.max_session_time:
            self._session_timer = self._clock.callLater(
                self.settings.max_session_time, self._timed_out, "session time limit")
        self._log("connection from {ip}", ip=self.client_ip)
        self._reply(replies.greeting(self.settings.hostname, self.session.trace_id))
        self._await_command()

    def connectionLost(self, reason=None):
        if (self._mode != CLOSED and self._handshake_timer is not None
                and self._handshake_timer.active() and reason is not None):
            # The connection ended inside a TLS handshake: say why, once.
            self.metrics.refused_connections.labels("TLS handshake failed").inc()
            self._log("TLS handshake failed: {why}", why=_tls_error_text(reason))
        self._mode = CLOSED
        if not self.closed.called:
            self.closed.callback(None)
        for timer in (self._timer, self._handshake_timer, self._session_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._reset_transaction()
        self._set_avatar(None, None)
        if self._attempts is not None:
            self._attempts.count()  # no AUTH followed them: they count now
        self.factory.release(self)

    def handshakeCompleted(self):
        self.metrics.tls_handshakes.inc()
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()

    def _close(self):
        self._mode = CLOSED
        self.transport.loseConnection()

    def _log(self, fmt, **kw):
        log.info("[{trace}] " + fmt, trace=self.session.trace_id if self.session else "-", **kw)

    # -- timers -------------------------------------------------------------

    # Deadlines, not idle timers (docs/smtp.md §9): a client that trickles a
    # byte now and then must not hold its session for ever.

    def _arm(self, seconds: float, reason: str):
        # The timer is moved only when the deadline comes sooner than it
        # would fire (rare); a later deadline is only noted, and the timer
        # that fires early re-arms itself for the rest. This keeps the
        # per-command cost to a store and spares the reactor's heap.
        self._timeout_reason = reason
        seconds = max(0.0, seconds)
        self._deadline = self._clock.seconds() + seconds
        timer = self._timer
        if timer is None or not timer.active():
            self._timer = self._clock.callLater(seconds, self._deadline_reached)
        elif timer.getTime() > self._deadline:
            timer.reset(seconds)

    def _deadline_reached(self):
        remaining = self._deadline - self._clock.seconds()
        if remaining > 0:
            self._timer = self._clock.callLater(remaining, self._deadline_reached)
            return
        self._timed_out()

    def _await_command(self):
        """Nothing of the next command has arrived: it has idle_timeout to come
        whole (the deadline is not moved by its bytes, see L{dataReceived})."""
        self._arm(self.settings.idle_timeout, "command not complete in time")

    def _arm_data_deadline(self):
        """DATA may take data_timeout, plus its bytes so far at min_data_rate
        (as Postfix's smtpd_min_data_rate); without a rate, data_timeout
        between chunks."""
        rate = self.settings.min_data_rate
        if not rate:
            return self._arm(self.settings.data_timeout, "no message data in time")
        deadline = self._data_started + self.settings.data_timeout + self._data_bytes / rate
        self._arm(deadline - self._clock.seconds(), "message data slower than the minimum rate")

    def _timed_out(self, reason=None):
        if self._mode == CLOSED:
            return
        self._log("timeout: {reason}", reason=reason or self._timeout_reason)
        self._reply(replies.timeout(self.settings.hostname))
        self._close()

    def _start_handshake_timer(self):
        self._handshake_timer = self._clock.callLater(
            self.settings.tls_handshake_timeout, self._handshake_timed_out)

    def _handshake_timed_out(self):
        if self._mode == CLOSED:
            return
        self._log("TLS handshake timeout")
        self._reply(replies.timeout(self.settings.hostname))
        self._mode = CLOSED
        self.transport.abortConnection()

    # -- input --------------------------------------------------------------

    def dataReceived(self, data: bytes):
        if self._mode == CLOSED:
            return
        if self._mode == DATA:
            self._data_bytes += len(data)
            self._arm_data_deadline()
        elif not self._buffer:
            # The first byte of a command line: the line has idle_timeout from now.
            self._await_command()
        self._buffer += data
        self._pump()

    def shutdown(self):
        """The gateway is stopping: an idle session is told 421 and closed at
        once; a session in a transaction when that transaction is over."""
        self._draining = True
        self._close_if_idle()

    def _close_if_idle(self) -> bool:
        if not self._draining or self._mode == CLOSED:
            return self._mode == CLOSED
        if self._busy or self._mode != COMMAND or self.mail_from is not None:
            return False
        self._reply(replies.shutting_down(self.settings.hostname))
        self._close()
        return True

    def _pump(self):
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._busy and not self._close_if_idle():
                if self._mode == DATA:
                    if not self._feed_body():
                        break
                    continue
                line = self._take_line()
                if line is None:
                    break
                if line is not False:
                    self._handle_line(line)
        finally:
            self._pumping = False
        if self._mode in (COMMAND, AUTH) and not self._buffer:
            self._await_command()
        self._flow_control()

    def _flow_control(self):
        if self._mode == CLOSED:
            return
        over = len(self._buffer) > MAX_BUFFER
        if over and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        elif not over and self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def _take_line(self):
        """The next command line; None when incomplete; False when a line was
        consumed and already answered (too long)."""
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_LINE:
                self._discarding = True
                self._buffer.clear()
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        elif not self._bare_lf_logged:
            self._bare_lf_logged = True
            self._log("command line ended by a bare LF")
        if self._discarding or len(line) > MAX_LINE:
            self._discarding = False
            if self._mode == AUTH:
                # An answer too long to be one ends the exchange: the next
                # lines are commands again, not answers (RFC 4954 §4).
                mechanism = self._challenger.mechanism
                self._mode, self._challenger = COMMAND, None
                if not self._auth_failure_logged(mechanism):
                    self._reply(replies.AUTH_LINE_TOO_LONG)
                return False
            self._reply(replies.LINE_TOO_LONG)
            return False
        return line

    def _reply(self, reply: SMTPReply):
        if reply.code >= 400:
            self.metrics.client_errors.labels(str(reply)).inc()
        self.transport.write(reply.encode())

    def _reply_lines(self, code: int, lines):
        out = [f"{code}-{text}\r\n" for text in lines[:-1]]
        out.append(f"{code} {lines[-1]}\r\n")
        self.transport.write("".join(out).encode("utf-8"))

    def _await(self, d):
        """Hold further input until C{d} (whose callbacks reply) has fired."""
        self._busy = True
        d.addErrback(self._failed)
        d.addBoth(self._resume)

    def _resume(self, _):
        self._busy = False
        self._pump()

    def _failed(self, failure):
        if self._mode == CLOSED:
            return
        self._challenger = None
        if self._mode in (DATA, AUTH):
            self._mode = COMMAND
        if failure.check(SMTPReply):
            return self._reply(failure.value)
        if failure.check(StoreUnavailable):
            self._log("store unavailable: {why}", why=failure.getErrorMessage())
        else:
            log.failure("[{trace}] internal error", failure, trace=self.session.trace_id)
        self._reply(replies.TEMPORARY_FAILURE)
        self._reset_transaction()

    # -- dispatch -------------------------------------------------------------

    def _handle_line(self, line: bytes):
        if self._mode == AUTH:
            return self._auth_response(line)
        verb, _, arg = line.partition(b" ")
        try:
            verb = verb.decode("ascii").upper()
        except UnicodeDecodeError:
            return self._reply(replies.UNSUPPORTED)
        self.metrics.command(verb)
        handler = getattr(self, "smtp_" + verb, None) if verb.isalpha() else None
        if handler is None:
            return self._reply(replies.UNSUPPORTED)
        try:
            text = arg.decode("utf-8").strip()
        except UnicodeDecodeError:
            return self._reply(_SYNTAX.get(verb, replies.R(501, "Syntax error")))
        try:
            result = handler(text)
        except Exception:
            # Never drop a client silently: the same 451 as an asynchronous error.
            return self._failed(Failure())
        if isinstance(result, defer.Deferred):
            self._await(result)

    def _reset_transaction(self):
        message = getattr(self, "_message", None)
        if message is not None:
            message.abort()
        self._message = None
        self._body = None
        self.mail_from = None
        self.recipients = []
        self._recipient_keys = ()  # a set once there is a recipient

    def _set_avatar(self, avatar, logout):
        if self._logout is not None:
            self._logout()
        self.avatar, self._logout = avatar, logout

    @property
    def tls_active(self) -> bool:
        return self.session is not None and self.session.tls

    @property
    def auth_permitted(self) -> bool:
        return self.tls_active or not self.settings.auth_requires_tls

    # -- commands -------------------------------------------------------------

    def smtp_HELO(self, arg):
        return self._greet(arg, esmtp=False)

    def smtp_EHLO(self, arg):
        return self._greet(arg, esmtp=True)

    def _greet(self, arg, esmtp):
        name = arg.split()[0] if arg else ""
        if not name:
            return self._reply(replies.HELO_SYNTAX)
        self._reset_transaction()
        self.session.helo = "".join(c for c in name if c.isprintable())
        self.session.esmtp = esmtp
        host = self.settings.hostname
        if not esmtp:
            return self._reply(replies.R(250, host))
        lines = [host, "PIPELINING", f"SIZE {self.settings.max_message_size}",
                 "8BITMIME", "SMTPUTF8"]
        if self.factory.tls_options is not None and not self.tls_active:
            lines.append("STARTTLS")
        if self.auth_permitted:
            lines.append("AUTH " + " ".join(MECHANISMS))
        self._reply_lines(250, lines)

    def smtp_RSET(self, arg):
        self._reset_transaction()
        self._reply(replies.OK)

    def smtp_NOOP(self, arg):
        self._reply(replies.OK)

    def smtp_QUIT(self, arg):
        self._reply(replies.CLOSING)
        self._close()

    def smtp_STARTTLS(self, arg):
        if self.tls_active:
            return self._reply(replies.TLS_ALREADY_ACTIVE)
        if self.factory.tls_options is None:
            return self._reply(replies.TLS_NOT_AVAILABLE)
        if arg:
            return self._reply(replies.R(501, "Syntax: STARTTLS"))
        self._reply(replies.TLS_READY)
        # RFC 3207: whatever the client pipelined after STARTTLS was sent in
        # the clear and must not be executed; the session starts over.
        self._buffer.clear()
        self._reset_transaction()
        self._set_avatar(None, None)
        self.session = Session(self.session.trace_id, self.settings.hostname,
                               self.client_ip, tls=True, attempts=self._attempts)
        start_tls(self.transport, self.factory.tls_options.server_options())
        self._start_handshake_timer()

    # AUTH ----------------------------------------------------------------

    def smtp_AUTH(self, arg):
        if not self.auth_permitted:
            return self._reply(replies.AUTH_NEEDS_TLS)
        if self.session.mechanism not in (None, "IP"):
            return self._reply(replies.AUTH_ALREADY)
        if self.mail_from is not None:
            return self._reply(replies.AUTH_IN_TRANSACTION)
        words = arg.split()
        if not words or len(words) > 2:
            return self._reply(replies.AUTH_SYNTAX)
        mechanism = words[0].upper()
        if mechanism not in MECHANISMS:
            return self._reply(replies.AUTH_UNKNOWN_MECHANISM)
        if mechanism == "PLAIN":
            self._challenger = PlainCredentials()
        elif mechanism == "LOGIN":
            self._challenger = LoginCredentials()
        else:
            self._challenger = CramMD5Credentials(self.settings.hostname)
        if len(words) == 2:
            if mechanism == "CRAM-MD5":
                self._challenger = None
                return self._auth_failed(mechanism)
            return self._auth_response(words[1].encode("ascii", "replace"))
        self._mode = AUTH
        self._challenge()

    def _challenge(self):
        self._mode = AUTH
        text = base64.b64encode(self._challenger.getChallenge()).decode("ascii")
        self.transport.write(f"334 {text}\r\n".encode("ascii"))

    def _auth_response(self, line: bytes):
        challenger, self._mode = self._challenger, COMMAND
        if line.strip() == b"*":
            self._challenger = None
            return self._reply(replies.AUTH_CANCELLED)
        try:
            response = b"" if line == b"=" else base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            self._challenger = None
            return self._reply(replies.AUTH_BAD_BASE64)
        try:
            challenger.setResponse(response)
        except MalformedResponse:
            self._challenger = None
            if challenger.mechanism == "PLAIN":
                if not self._auth_failure_logged("PLAIN", challenger.user):
                    self._reply(replies.AUTH_PLAIN_MALFORMED)
                return
            return self._auth_failed(challenger.mechanism, challenger.user)
        if challenger.moreChallenges():
            return self._challenge()
        self._challenger = None
        d = self.factory.portal.login(challenger, self.session, ISubmissionDelivery)
        d.addCallback(self._authenticated, challenger.mechanism)
        d.addErrback(self._auth_error, challenger.mechanism)
        return self._await(d)

    def _authenticated(self, result, mechanism):
        _, avatar, logout = result
        if self._mode == CLOSED:  # the client left while the login ran
            logout()
            return
        self._set_avatar(avatar, logout)
        self.session.mechanism = mechanism
        self.metrics.auth.labels(mechanism, "success").inc()
        self._log("authenticated with {mechanism} for {server}", mechanism=mechanism,
                  server=avatar.identity.server.full_name)
        self._reply(replies.granted(avatar.identity.server.full_name))

    def _auth_error(self, failure, mechanism):
        failure.trap(UnauthorizedLogin)
        self.metrics.auth.labels(mechanism, "failure").inc()
        if self._mode == CLOSED:
            return
        if failure.check(LockedOut):
            return self._locked_out()
        self._reply(_DENIED[mechanism])

    def _auth_failure_logged(self, mechanism, user=None):
        """Record one failure that no checker saw (a malformed response);
        True when the client is now locked out (it has been told so, and is
        being disconnected)."""
        if self._attempts.failed(mechanism, user):
            return self._locked_out()
        return False

    def _throttled(self) -> bool:
        """Refuse the client if its address is locked out of authenticating."""
        return self.factory.guard.locked(self.client_ip) and self._locked_out()

    def _locked_out(self) -> bool:
        self._log("locked out after too many authentication failures")
        self._reply(replies.too_many_auth_failures(self.settings.hostname))
        self._close()
        return True

    def _auth_failed(self, mechanism, user=None):
        self.metrics.auth.labels(mechanism, "failure").inc()
        if self._auth_failure_logged(mechanism, user):
            return
        self._reply(_DENIED[mechanism])

    # MAIL / RCPT / DATA ------------------------------------------------------

    def smtp_MAIL(self, arg):
        if arg[:5].upper() != "FROM:":
            return self._reply(replies.MAIL_SYNTAX)
        if self.session.helo is None or self.recipients:
            return self._reply(replies.MAIL_FIRST)
        try:
            path, params = split_mail_argument(arg[5:])
            if not path.strip():
                raise AddressError("empty")
            sender = parse_path(path, allow_empty=True)
        except AddressError:
            return self._reply(replies.MAIL_SYNTAX)
        problem = self._mail_parameters(params)
        if problem is not None:
            return self._reply(problem)
        self._reset_transaction()
        self.mail_from = str(sender) if sender is not None else ""
        self._reply(replies.OK)

    def _mail_parameters(self, params):
        for name, value in params.items():
            if name == "SIZE":
                if value is None or not value.isdigit():
                    return replies.MAIL_SYNTAX
                if int(value) > self.settings.max_message_size:
                    return replies.too_large(self.settings.max_message_size)
            elif name == "BODY":
                if value is None or value.upper() not in BODY_TYPES:
                    return replies.UNSUPPORTED_PARAMETER
            elif name == "SMTPUTF8":
                if value is not None:
                    return replies.UNSUPPORTED_PARAMETER
            elif name != "AUTH":
                return replies.UNSUPPORTED_PARAMETER
        return None

    def smtp_RCPT(self, arg):
        if arg[:3].upper() != "TO:":
            return self._reply(replies.RCPT_SYNTAX)
        if self.mail_from is None:
            return self._reply(replies.RCPT_FIRST)
        try:
            path, params = split_mail_argument(arg[3:])
            if path.strip() in ("", "<>"):
                return self._reply(replies.RCPT_EMPTY)
            recipient = parse_path(path, allow_empty=False)
        except AddressError:
            return self._reply(replies.RCPT_SYNTAX)
        if not recipient.domain:
            return self._reply(replies.RCPT_INVALID)
        if params:
            return self._reply(replies.UNSUPPORTED_PARAMETER)
        if recipient.is_address_literal and not self.settings.allow_address_literals:
            self._log("recipient refused: address literal {rcpt}", rcpt=str(recipient))
            return self._reply(replies.ADDRESS_LITERAL)
        if self.avatar is not None:  # authenticated: no log-in to wait for
            return self._check_recipient(self.avatar, recipient)
        d = self._authorise()
        d.addCallback(self._check_recipient, recipient)
        return d

    def _authorise(self):
        """The avatar, logging in by client address when there is none yet."""
        if self.avatar is not None:
            return defer.succeed(self.avatar)
        d = self.factory.portal.login(ClientAddress(self.client_ip), self.session,
                                      ISubmissionDelivery)

        def bound(result):
            _, avatar, logout = result
            if self._mode == CLOSED:
                logout()
                return None
            self._set_avatar(avatar, logout)
            self.session.mechanism = "IP"
            self._log("client address matches a credential of {server}",
                      server=avatar.identity.server.full_name)
            return avatar

        def refused(failure):
            failure.trap(UnauthorizedLogin)
            if self._mode == CLOSED:
                return None
            if failure.check(LockedOut):
                self._locked_out()
                return None
            raise replies.AUTH_REQUIRED
        return d.addCallbacks(bound, refused)

    def _check_recipient(self, avatar, recipient):
        if avatar is None:  # locked out while authorising; already answered
            return None
        d = avatar.check_recipient(recipient)

        def accept(_):
            if self._mode == CLOSED:
                return
            key = recipient.recipient_key
            if key in self._recipient_keys:
                return self._reply(replies.OK)  # the same recipient twice is one recipient
            if len(self.recipients) >= self.settings.max_recipients:
                return self._reply(replies.TOO_MANY_RECIPIENTS)
            if not self._recipient_keys:
                self._recipient_keys = set()
            self._recipient_keys.add(key)
            self.recipients.append(str(recipient))
            self._reply(replies.OK)
        return d.addCallback(accept)

    def smtp_DATA(self, arg):
        if self.mail_from is None or not self.recipients:
            return self._reply(replies.DATA_FIRST)
        self._message = self.avatar.open_message(self.mail_from, self.recipients)
        self._body = BodyDecoder()
        self._mode = DATA
        self._reply(replies.GO_AHEAD)
        self._data_started = self._clock.seconds()
        self._data_bytes = len(self._buffer)
        self._arm_data_deadline()

    def _feed_body(self) -> bool:
        """Move buffered bytes into the message; True once the end was seen
        (the final checks are then under way)."""
        if not self._buffer:
            return False
        data = bytes(self._buffer)
        self._buffer.clear()
        body, rest = self._body.feed(data)
        if body:
            self._message.write(body)
        if rest is None:
            return False
        self._buffer += rest
        self._mode = COMMAND
        message, self._message = self._message, None
        d = message.finish()
        d.addCallbacks(self._queued, self._rejected)
        d.addBoth(self._transaction_over)
        self._await(d)
        return True

    def _queued(self, token):
        self._log("queued as {token}", token=token)
        self.metrics.messages_queued.inc()
        self._reply(replies.queued(token))

    def _rejected(self, failure):
        reason = str(failure.value) if failure.check(SMTPReply) else "internal error"
        self.metrics.messages.labels("rejected", reason).inc()
        return failure

    def _transaction_over(self, result):
        self._reset_transaction()
        self._await_command()
        return result


def _tls_error_text(reason) -> str:
    """A TLS failure in one line (OpenSSL's reasons, no stack)."""
    value = getattr(reason, "value", reason)
    args = getattr(value, "args", ())
    if args and isinstance(args[0], list):  # OpenSSL.SSL.Error: [(lib, func, reason)]
        reasons = [str(item[-1]) for item in args[0] if item]
        if reasons:
            return ", ".join(reasons)
    return str(value) or type(value).__name__


_DENIED = {"CRAM-MD5": replies.AUTH_DENIED, "PLAIN": replies.AUTH_INVALID_CREDENTIAL,
           "LOGIN": replies.AUTH_INVALID_CREDENTIAL}

_SYNTAX = {
    "HELO": replies.HELO_SYNTAX, "EHLO": replies.HELO_SYNTAX,
    "MAIL": replies.MAIL_SYNTAX, "RCPT": replies.RCPT_SYNTAX,
    "AUTH": replies.AUTH_SYNTAX,
}
