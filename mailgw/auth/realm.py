"""The realm: an authenticated L{Identity} becomes an SMTP session's delivery
avatar, or an HTTP API request's client, bound to the identity's server. The
credential's C{last_used_at} is recorded here, in the background, so the
reply does not wait for it."""
from __future__ import annotations

from twisted.cred.portal import IRealm
from twisted.logger import Logger
from zope.interface import implementer

from mailgw.auth.guard import AuthenticationGuard, GuardedPortal
from mailgw.interfaces import IAPIClient, ISubmissionDelivery

log = Logger()


@implementer(IAPIClient)
class APIClient:
    """The avatar of one HTTP API request."""

    def __init__(self, identity):
        self.identity = identity

    def logout(self) -> None:
        pass


@implementer(IRealm)
class SubmissionRealm:
    """Makes the avatar each protocol asks for."""

    def __init__(self, directory, clock, make_delivery):
        """
        @param make_delivery: C{(identity, session) -> ISubmissionDelivery}
        """
        self._directory = directory
        self._clock = clock
        self._make_delivery = make_delivery

    def requestAvatar(self, avatarId, mind, *interfaces):
        if ISubmissionDelivery in interfaces:
            interface, avatar = ISubmissionDelivery, self._make_delivery(avatarId, mind)
        elif IAPIClient in interfaces:
            interface, avatar = IAPIClient, APIClient(avatarId)
        else:
            raise NotImplementedError("mailgw provides ISubmissionDelivery and IAPIClient")
        d = self._directory.touch_credential(avatarId.credential.id, self._clock.seconds())
        d.addErrback(lambda f: log.warn(
            "could not record last use of credential {id}: {why}",
            id=avatarId.credential.id, why=f.getErrorMessage()))
        return interface, avatar, avatar.logout


def build_portal(directory, clock, make_delivery, guard=None) -> GuardedPortal:
    """The portal of both protocols, with every checker (CRAM-MD5, key for
    PLAIN/LOGIN, client address, API key), watched by C{guard} (an
    L{AuthenticationGuard}; a new one that counts nothing by default)."""
    from twisted.cred.portal import Portal

    from mailgw.auth.checkers import (
        APIKeyChecker, ClientAddressChecker, CramMD5Checker, KeyChecker,
    )
    realm = SubmissionRealm(directory, clock, make_delivery)
    portal = Portal(realm, [CramMD5Checker(directory), KeyChecker(directory),
                            ClientAddressChecker(directory), APIKeyChecker(directory)])
    return GuardedPortal(portal, guard if guard is not None else AuthenticationGuard())
