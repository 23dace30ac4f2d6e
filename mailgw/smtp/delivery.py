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
        date = format_datetime(datetime.fromtimestamp(self._clock.seconds(), timezone.utc))
        by = f"by {self.hostname} with {s.protocol_word} id {token}; {date}"
        if self.identity.server.privacy_mode:
            return f"Received: {by}\r\n".encode("utf-8")
        helo = s.helo or s.client_ip
        return f"Received: from {helo} ({s.client_ip} [{s.client_ip}]) {by}\r\n".encode(
            "utf-8", "replace")

    @defer.inlineCallbacks
    def commit(self, message: SubmissionMessage, header_block: bytes, body):
        """Decide and store; fires with the queue id once committed."""
        found = yield self._store.credential_by_id(self.identity.credential.id)
        if found is None:
            raise replies.AUTH_REQUIRED
        credential, server = found
        if server.is_suspended:
            raise replies.SERVER_SUSPENDED
        names, any_domain = yield self._store.authorised_domains(server.id)
        domain = sender_domain(header_block, server, names, any_domain)
        hold_reason = yield self._hold_reason(credential, server)
        envelope = MessageEnvelope(
            token=message.token, server_id=server.id, credential_id=credential.id,
            mail_from=message.mail_from, rcpt_to=message.recipients,
            sender_domain=domain, protocol=self.session.protocol_word,
            status="held" if hold_reason else "queued", hold_reason=hold_reason)
        yield self._store.enqueue(envelope, body)
        return message.token

    @defer.inlineCallbacks
    def _hold_reason(self, credential, server):
        if credential.hold:
            return "credential on hold"
        if server.mode == "development":
            return "server in development mode"
        if server.send_limit is not None:
            since = self._clock.seconds() - SEND_LIMIT_WINDOW
            count = yield self._store.messages_since(server.id, since)
            if count >= server.send_limit:
                return "send limit reached"
        return None

    def logout(self) -> None:
        pass
