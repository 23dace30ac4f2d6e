"""The failure throttle in the authentication layer, for every protocol.

L{GuardedPortal} wraps the portal both protocols log in through (SMTP AUTH,
the SMTP client-address login, the HTTP API key). A locked-out address is
refused before any checker runs, and every refused login is reported to the
L{AuthenticationGuard}, which logs and counts it. A protocol reports the
failures no checker sees (a malformed SASL response) to the same guard, so
guesses cannot be spread over mechanisms or protocols.

Two budgets (see C{docs/operations.md}):
  - I{key} failures (a wrong key, digest or malformed answer) count towards
    C{max_failures}. They are logged as C{Authentication failure for <ip>}
    (the line fail2ban matches) with the mechanism and the user name given.
    Failures that a successful AUTH follows in the same connection are not
    counted and are logged at a lower level: clients such as Python's
    C{smtplib} try CRAM-MD5 first and fall back to PLAIN, and must not lock
    themselves out.
  - I{keyless} attempts (RCPT without authentication, an API call without a
    key) count towards the larger C{anonymous_max_failures}, are logged
    without that line, and locking them out refuses only keyless attempts: a
    stranger cannot lock a shared address out of working keys.
"""
from __future__ import annotations

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger

from mailgw.auth.credentials import IClientAddress

log = Logger()

#: failed AUTH attempts a connection may make before the one that succeeds
#: (a client trying its mechanisms in turn); past this they count at once
FORGIVABLE_PER_CONNECTION = 2
#: the longest user name written to a log line
MAX_LOGGED_USER = 64


class LockedOut(UnauthorizedLogin):
    """The client address is locked out after too many failures."""


def loggable_user(user) -> str:
    """A client-chosen user name made safe for one log line."""
    if user is None:
        return "-"
    text = "".join(c if c.isprintable() else "?" for c in str(user))
    if len(text) > MAX_LOGGED_USER:
        text = text[:MAX_LOGGED_USER] + "..."
    return '"' + text.replace('"', "'") + '"'


class AuthenticationGuard:
    """Logs and counts authentication failures per client address.

    @ivar throttle: the L{mailgw.auth.throttle.FailureThrottle} for key
        failures, or C{None} to count nothing (failures are still logged).
    @ivar anonymous: the throttle for keyless attempts, or C{None}.
    """

    def __init__(self, throttle=None, anonymous=None):
        self.throttle = throttle
        self.anonymous = anonymous

    def locked(self, client_ip: str) -> bool:
        """Is C{client_ip} locked out of authenticating now?"""
        return self.throttle is not None and self.throttle.locked(client_ip)

    def anonymous_locked(self, client_ip: str) -> bool:
        """Are keyless attempts from C{client_ip} refused now?"""
        return self.anonymous is not None and self.anonymous.locked(client_ip)

    def failed(self, client_ip: str, trace_id: str, mechanism: str = "-",
               user=None) -> bool:
        """Log and count one key failure.

        @return: True when C{client_ip} is (now) locked out.
        """
        log.warn("[{trace}] Authentication failure for {ip} ({mechanism}, user {user})",
                 trace=trace_id, ip=client_ip, mechanism=mechanism, user=loggable_user(user))
        return self.throttle is not None and self.throttle.record_failure(client_ip)

    def anonymous_failed(self, client_ip: str, trace_id: str, what: str) -> bool:
        """Log and count one keyless attempt.

        @return: True when keyless attempts from C{client_ip} are (now) refused.
        """
        log.info("[{trace}] Unauthenticated attempt from {ip}: {what}",
                 trace=trace_id, ip=client_ip, what=what)
        return self.anonymous is not None and self.anonymous.record_failure(client_ip)

    def attempts(self, client_ip: str, trace_id: str,
                 forgivable: int = FORGIVABLE_PER_CONNECTION) -> ConnectionAttempts:
        """The record of one connection's (or one request's) AUTH attempts."""
        return ConnectionAttempts(self, client_ip, trace_id, forgivable)


class ConnectionAttempts:
    """The failed AUTH attempts of one connection, counted only when no AUTH
    succeeds after them in that connection (or when there are too many)."""

    __slots__ = ("_guard", "client_ip", "trace_id", "_forgivable", "_pending")

    def __init__(self, guard: AuthenticationGuard, client_ip: str, trace_id: str,
                 forgivable: int):
        self._guard = guard
        self.client_ip = client_ip
        self.trace_id = trace_id
        self._forgivable = forgivable
        self._pending: list[tuple[str, object]] = []  # usually stays empty

    def failed(self, mechanism: str, user=None) -> bool:
        """One failed attempt.

        @return: True when the address is (now) locked out.
        """
        self._pending.append((mechanism, user))
        if len(self._pending) > self._forgivable:
            return self.count()
        log.info("[{trace}] authentication attempt failed ({mechanism}, user {user}); "
                 "not counted if this connection authenticates", trace=self.trace_id,
                 mechanism=mechanism, user=loggable_user(user))
        return False

    def succeeded(self) -> None:
        """An AUTH succeeded: the attempts before it in this connection do not count."""
        if self._pending:
            log.info("[{trace}] {n} failed attempt(s) before this authentication not counted",
                     trace=self.trace_id, n=len(self._pending))
        self._pending.clear()

    def count(self) -> bool:
        """Count (and log) the failures held so far.

        @return: True when the address is (now) locked out.
        """
        pending, self._pending = self._pending, []
        locked = False
        for mechanism, user in pending:
            locked = self._guard.failed(self.client_ip, self.trace_id, mechanism, user) or locked
        return locked


class GuardedPortal:
    """A C{Portal} whose logins the L{AuthenticationGuard} watches.

    The mind of every login must have C{client_ip}, C{trace_id} and
    C{attempts} (a L{ConnectionAttempts}): the SMTP
    L{mailgw.smtp.session.Session}, the API's request facts.
    """

    def __init__(self, portal, guard: AuthenticationGuard):
        self._portal = portal
        self.guard = guard

    def login(self, credentials, mind, *interfaces):
        """As C{Portal.login}; fails with L{LockedOut} for a locked-out
        address (before any checker runs, or after the failure that locks it)."""
        keyless = IClientAddress.providedBy(credentials)
        locked = self.guard.anonymous_locked if keyless else self.guard.locked
        if locked(mind.client_ip):
            return defer.fail(LockedOut())
        d = self._portal.login(credentials, mind, *interfaces)
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(mind, keyless),
                       errbackArgs=(mind, credentials, keyless))
        return d

    @staticmethod
    def _succeeded(result, mind, keyless):
        if not keyless:
            mind.attempts.succeeded()
        return result

    def _failed(self, failure, mind, credentials, keyless):
        failure.trap(UnauthorizedLogin)
        if keyless:
            locked = self.guard.anonymous_failed(mind.client_ip, mind.trace_id,
                                                 "no authentication and no smtp-ip credential")
        else:
            locked = mind.attempts.failed(getattr(credentials, "mechanism", "-"),
                                          getattr(credentials, "user", None))
        if locked:
            raise LockedOut()
        return failure
