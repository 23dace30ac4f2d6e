"""The delivery avatar: one authenticated session acting for one tenant server.

It answers the envelope questions (may this server send now?), opens the
message sink with its Received header, and at the final dot decides the From/
Sender verdict and the message's status (queued or held) from the directory as
it is at that moment, then commits through the queue.
"""
from __future__ import annotations

from dataclasses import dataclass
from email.utils import format_datetime
from datetime import datetime, timezone

from twisted.internet import defer
from zope.interface import implementer

from mailgw.interfaces import ISubmissionDelivery
from mailgw.model import MessageEnvelope, generate_token
from mailgw.smtp import replies
from mailgw.smtp.message import SubmissionMessage, sender_domain

QUEUE_ID_LENGTH = 12
SEND_LIMIT_WINDOW = 3600.0


@dataclass(frozen=True)
class DeliverySettings:
    hostname: str
    max_message_size: int
    spool_directory: str | None = None


@implementer(ISubmissionDelivery)
class SubmissionDelivery:
    def __init__(self, identity, session, store, settings: DeliverySettings, clock):
        self.identity = identity
        self.session = session
        self._store = store
        self._settings = settings
        self._clock = clock

    @property
    def hostname(self) -> str:
        return self._settings.hostname

    def check_recipient(self, address):
        d = self._store.server_by_id(self.identity.server.id)

        def check(server):
            if server is None or server.is_suspended:
                raise replies.SERVER_SUSPENDED
        return d.addCallback(check)

    def open_message(self, mail_from, recipients) -> SubmissionMessage:
        token = generate_token(QUEUE_ID_LENGTH)
        message = SubmissionMessage(self, token, mail_from, recipients,
                                    self._settings.max_message_size,
                                    self._settings.spool_directory)
        message.write(self.received_header(token))
        return message

    def received_header(self, token: str) -> bytes:
        s = self.session
        return received_header(
            self.hostname, s.protocol_word, token, self._clock.seconds(),
            client_ip=s.client_ip, helo=s.helo or s.client_ip,
            privacy=self.identity.server.privacy_mode)

    def commit(self, message: SubmissionMessage, fields, body):
        """Decide and store; fires with the queue id once committed."""
        d = commit_message(
            self._store, self._clock, credential_id=self.identity.credential.id,
            token=message.token, mail_from=message.mail_from,
            recipients=message.recipients, fields=fields, body=body,
            protocol=self.session.protocol_word)
        return d.addCallback(lambda ids: message.token)

    def logout(self) -> None:
        pass


def received_header(hostname: str, protocol: str, token: str, when: float, *,
                    client_ip: str | None = None, helo: str | None = None,
                    privacy: bool = False) -> bytes:
    """The trace header prepended to every accepted message (spec §6).

    Without C{client_ip} (or with C{privacy}) only the C{by} part is written.
    """
    date = format_datetime(datetime.fromtimestamp(when, timezone.utc))
    by = f"by {hostname} with {protocol} id {token}; {date}"
    if privacy or client_ip is None:
        return f"Received: {by}\r\n".encode("utf-8")
    return f"Received: from {helo or client_ip} ({client_ip} [{client_ip}]) {by}\r\n".encode(
        "utf-8", "replace")


@defer.inlineCallbacks
def commit_message(store, clock, *, credential_id: int, token: str, mail_from: str,
                   recipients, fields, body, protocol: str):
    """The end of every submission, SMTP or HTTP: re-read the credential and
    its server, apply the From/Sender policy, decide queued or held, and commit
    the body with one queue entry per recipient.

    @param fields: the message's header fields, as
        L{mailgw.smtp.sender_policy.header_fields} splits them.

    @return: Deferred firing with C{{recipient: queue entry id}} once the
        commit is durable; failing with C{replies.SERVER_SUSPENDED},
        C{replies.SENDER_NOT_VALID} or C{replies.AUTH_REQUIRED} (credential
        gone), or the store's error.
    """
    found = yield store.credential_by_id(credential_id)
    if found is None:
        raise replies.AUTH_REQUIRED
    credential, server = found
    if server.is_suspended:
        raise replies.SERVER_SUSPENDED
    names, any_domain = yield store.authorised_domains(server.id)
    domain = sender_domain(fields, server, names, any_domain)
    hold_reason = yield hold_reason_for(store, clock, credential, server)
    envelope = MessageEnvelope(
        token=token, server_id=server.id, credential_id=credential.id,
        mail_from=mail_from, rcpt_to=tuple(recipients), sender_domain=domain,
        protocol=protocol, status="held" if hold_reason else "queued",
        hold_reason=hold_reason)
    ids = yield store.enqueue(envelope, body)
    return ids


@defer.inlineCallbacks
def hold_reason_for(store, clock, credential, server):
    """Why a new message must be held rather than relayed, or None."""
    if credential.hold:
        return "credential on hold"
    if server.mode == "development":
        return "server in development mode"
    if server.send_limit is not None:
        count = yield store.messages_since(server.id, clock.seconds() - SEND_LIMIT_WINDOW)
        if count >= server.send_limit:
            return "send limit reached"
    return None
