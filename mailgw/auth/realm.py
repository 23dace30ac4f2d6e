"""The realm: an authenticated L{Identity} becomes the session's delivery
avatar, bound to the identity's server. The credential's C{last_used_at} is
recorded here, in the background, so the reply does not wait for it."""
from __future__ import annotations

from twisted.cred.portal import IRealm
from twisted.logger import Logger
from zope.interface import implementer

from mailgw.interfaces import ISubmissionDelivery

log = Logger()


@implementer(IRealm)
class SubmissionRealm:
    def __init__(self, directory, clock, make_delivery):
        """
        @param make_delivery: C{(identity, session) -> ISubmissionDelivery}
        """
        self._directory = directory
        self._clock = clock
        self._make_delivery = make_delivery

    def requestAvatar(self, avatarId, mind, *interfaces):
        if ISubmissionDelivery not in interfaces:
            raise NotImplementedError("mailgw only provides ISubmissionDelivery")
        avatar = self._make_delivery(avatarId, mind)
        d = self._directory.touch_credential(avatarId.credential.id, self._clock.seconds())
        d.addErrback(lambda f: log.warn(
            "could not record last use of credential {id}: {why}",
            id=avatarId.credential.id, why=f.getErrorMessage()))
        return ISubmissionDelivery, avatar, avatar.logout


def build_portal(directory, clock, make_delivery):
    """The portal with every checker: CRAM-MD5, key (PLAIN/LOGIN), client address."""
    from twisted.cred.portal import Portal

    from mailgw.auth.checkers import ClientAddressChecker, CramMD5Checker, KeyChecker
    realm = SubmissionRealm(directory, clock, make_delivery)
    return Portal(realm, [CramMD5Checker(directory), KeyChecker(directory),
                          ClientAddressChecker(directory)])
