"""The failure throttle in the authentication layer, for every protocol.

L{GuardedPortal} wraps the portal both protocols log in through (SMTP AUTH,
the SMTP client-address login, the HTTP API key): a locked-out address is
refused before any checker runs, and every C{UnauthorizedLogin} is logged as
C{Authentication failure for <ip>} (the line fail2ban filters match) and
counted. A protocol reports the failures no checker sees (a malformed SASL
response) to the same L{AuthenticationGuard}, so guesses cannot be spread
over mechanisms or protocols.
"""
from __future__ import annotations

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger

log = Logger()


class LockedOut(UnauthorizedLogin):
    """The client address is locked out after too many failures."""


class AuthenticationGuard:
    """Logs and counts authentication failures per client address.

    @ivar throttle: the L{mailgw.auth.throttle.FailureThrottle}, or C{None}
        to count nothing (failures are still logged).
    """

    def __init__(self, throttle=None):
        self.throttle = throttle

    def locked(self, client_ip: str) -> bool:
        """Is C{client_ip} locked out now?"""
        return self.throttle is not None and self.throttle.locked(client_ip)

    def failed(self, client_ip: str, trace_id: str) -> bool:
        """Log and count one failure.

        @return: True when C{client_ip} is (now) locked out.
        """
        log.warn("[{trace}] Authentication failure for {ip}", trace=trace_id, ip=client_ip)
        return self.throttle is not None and self.throttle.record_failure(client_ip)


class GuardedPortal:
    """A C{Portal} whose logins the L{AuthenticationGuard} watches.

    The mind of every login must have C{client_ip} and C{trace_id} (the SMTP
    L{mailgw.smtp.session.Session}, the API's request facts).
    """

    def __init__(self, portal, guard: AuthenticationGuard):
        self._portal = portal
        self.guard = guard

    def login(self, credentials, mind, *interfaces):
        """As C{Portal.login}; fails with L{LockedOut} for a locked-out
        address (before any checker runs, or after the failure that locks it)."""
        if self.guard.locked(mind.client_ip):
            return defer.fail(LockedOut())
        d = self._portal.login(credentials, mind, *interfaces)
        d.addErrback(self._failed, mind)
        return d

    def _failed(self, failure, mind):
        failure.trap(UnauthorizedLogin)
        if self.guard.failed(mind.client_ip, mind.trace_id):
            raise LockedOut()
        return failure
