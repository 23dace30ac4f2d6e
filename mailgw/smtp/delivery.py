"""The delivery avatar: one authenticated session acting for one tenant server.

It answers the envelope questions (may this server send now?) and opens each
message through the protocol-neutral L{mailgw.submission.SubmissionCore},
whose refusals it words as the wire contract's SMTP replies.
"""
from __future__ import annotations

from twisted.logger import Logger
from zope.interface import implementer

from mailgw.interfaces import ISubmissionDelivery
from mailgw.model import generate_token
from mailgw.smtp import replies
from mailgw.submission import (
    QUEUE_ID_LENGTH, CredentialGone, HeaderSectionTooLarge, LoopDetected, MalformedBody,
    MalformedHeaderSection, MessageTooLarge, Refusal, SenderNotAuthorised, ServerSuspended,
    SpoolFailure,
)

log = Logger()


def reply_for(refusal: Refusal) -> replies.SMTPReply:
    """The SMTP reply that words one of the core's refusals."""
    if isinstance(refusal, MessageTooLarge):
        return replies.too_large(refusal.max_size)
    if isinstance(refusal, HeaderSectionTooLarge):
        return replies.header_section_too_large(refusal.max_size)
    if isinstance(refusal, MalformedHeaderSection):
        return replies.header_section_not_valid(refusal.what)
    if isinstance(refusal, SpoolFailure):
        return replies.INSUFFICIENT_STORAGE if refusal.full else replies.TEMPORARY_FAILURE
    return _FIXED[type(refusal)]


_FIXED = {
    MalformedBody: replies.NUL_IN_BODY,
    LoopDetected: replies.LOOP_DETECTED,
    SenderNotAuthorised: replies.SENDER_NOT_VALID,
    ServerSuspended: replies.SERVER_SUSPENDED,
    CredentialGone: replies.AUTH_REQUIRED,
}


@implementer(ISubmissionDelivery)
class SubmissionDelivery:
    """The avatar the realm makes for an authenticated SMTP session."""

    def __init__(self, identity, session, core, store):
        """
        @param identity: the L{mailgw.auth.checkers.Identity} it acts for.
        @param session: the connection's L{mailgw.smtp.session.Session}.
        @param core: the L{mailgw.submission.SubmissionCore}.
        @param store: an L{mailgw.interfaces.IDirectory}.
        """
        self.identity = identity
        self.session = session
        self._core = core
        self._store = store

    def check_recipient(self, address):
        d = self._store.server_by_id(self.identity.server.id)

        def check(server):
            if server is None or server.is_suspended:
                raise replies.SERVER_SUSPENDED
        return d.addCallback(check)

    def open_message(self, mail_from, recipients) -> SMTPMessage:
        return SMTPMessage(self._core, self.identity, self.session, mail_from, recipients)

    def logout(self) -> None:
        pass


class SMTPMessage:
    """One message of an SMTP transaction, between DATA and the final reply."""

    def __init__(self, core, identity, session, mail_from: str, recipients):
        self._core = core
        self._identity = identity
        self._session = session
        self.token = generate_token(QUEUE_ID_LENGTH)
        self.mail_from = mail_from
        self.recipients = tuple(recipients)
        s = session
        self._incoming = core.open_message(core.received_header(
            s.protocol_word, self.token, client_ip=s.client_ip, helo=s.helo or s.client_ip,
            privacy=identity.server.privacy_mode), self.token)

    def write(self, chunk: bytes) -> None:
        """Body bytes, dot-stuffing undone, line ends as the client sent them."""
        self._incoming.write(chunk)

    def abort(self) -> None:
        self._incoming.close()

    def finish(self):
        """@return: Deferred firing with the queue id once committed, or
        failing with the L{replies.SMTPReply} to send."""
        d = self._core.finish(
            self._incoming, credential_id=self._identity.credential.id, token=self.token,
            mail_from=self.mail_from, recipients=self.recipients,
            protocol=self._session.protocol_word)
        d.addCallbacks(lambda ids: self.token, self._refused)
        return d

    def _refused(self, failure):
        failure.trap(Refusal)
        reply = reply_for(failure.value)
        log.info("[{trace}] message refused: {reason} ({reply})",
                 trace=self._session.trace_id, reason=failure.value.reason, reply=str(reply))
        raise reply
