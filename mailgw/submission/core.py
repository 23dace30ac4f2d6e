"""The end of every submission, SMTP or HTTP: the checks at the end of the
message in the wire contract's order (size, header section, loop, From/Sender),
the hold decision, the Received header, and the one durable commit.

Each check reads the directory as it is at that moment, so a suspension, a
removed credential or a newly verified domain applies to the next message.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, UTC
from email.utils import format_datetime

from twisted.internet import defer

from mailgw.model import MessageEnvelope
from mailgw.submission.message import IncomingMessage
from mailgw.submission.policy import AuthorisedDomains, check_sender_fields
from mailgw.submission.refusals import (
    CredentialGone, LoopDetected, SenderNotAuthorised, ServerSuspended,
)

#: the length of a queue id ("250 OK: queued as <id>", the API's token)
QUEUE_ID_LENGTH = 12
#: more Received headers naming this gateway than this is a loop
MAX_OWN_RECEIVED = 4
#: the window of a server's C{send_limit}
SEND_LIMIT_WINDOW = 3600.0


@dataclass(frozen=True)
class CoreSettings:
    """What the core needs of the configuration."""

    hostname: str
    max_message_size: int
    max_header_size: int = 1024 * 1024
    spool_directory: str | None = None


class SubmissionCore:
    """Opens incoming messages and finishes them: checks, holds, commit.

    @ivar settings: the L{CoreSettings}.
    """

    def __init__(self, store, clock, settings: CoreSettings):
        """
        @param store: an L{mailgw.interfaces.IDirectory} and
            L{mailgw.interfaces.IQueue} provider.
        @param clock: an C{IReactorTime}.
        """
        self._store = store
        self._clock = clock
        self.settings = settings

    @property
    def hostname(self) -> str:
        return self.settings.hostname

    def open_message(self, received: bytes, token: str | None = None) -> IncomingMessage:
        """A new message whose first line is C{received}.

        @param token: the message's queue id: given, a message without a
            C{Date} or C{Message-ID} field gets one (L{missing_fields}).
        """
        s = self.settings
        complete = None
        if token is not None:
            complete = functools.partial(missing_fields, hostname=self.hostname, token=token,
                                         clock=self._clock)
        return IncomingMessage(received, max_size=s.max_message_size,
                               max_header_size=s.max_header_size,
                               spool_directory=s.spool_directory, complete=complete)

    def received_header(self, protocol: str, token: str, *, client_ip: str | None = None,
                        helo: str | None = None, privacy: bool = False) -> bytes:
        """Our trace header, dated now (see L{received_header})."""
        return received_header(self.hostname, protocol, token, self._clock.seconds(),
                               client_ip=client_ip, helo=helo, privacy=privacy)

    def finish(self, message: IncomingMessage, *, credential_id: int, token: str,
               mail_from: str, recipients, protocol: str):
        """Check C{message} (whose last byte has been written) and commit it.

        @return: Deferred firing with C{{recipient: queue entry id}} once the
            commit is durable; failing with a L{mailgw.submission.Refusal}
            or the store's error. The message is closed either way.
        """
        # Plain callbacks, not inlineCallbacks: this runs for every message,
        # and the directory's answers usually come from memory at once.
        try:
            fields = message.end()
            if own_received_count(fields, self.hostname) > MAX_OWN_RECEIVED:
                raise LoopDetected()
            commit = _Commit(message, fields, token, mail_from, tuple(recipients), protocol)
            d = self._store.credential_by_id(credential_id)
            d.addCallback(self._credential_found, commit)
        except BaseException:
            message.close()
            return defer.fail()
        return d.addBoth(_closing, message)

    def _credential_found(self, found, commit: _Commit):
        if found is None:
            raise CredentialGone()
        credential, server = found
        if server.is_suspended:
            raise ServerSuspended()
        d = self._store.authorised_domains(server.id)
        return d.addCallback(self._domains_found, commit, credential, server)

    def _domains_found(self, answer, commit: _Commit, credential, server):
        names, any_domain = answer
        domain = check_sender_fields(
            commit.fields, allow_sender_header=server.allow_sender_header,
            authorised=AuthorisedDomains(frozenset(names), any_domain))
        if domain is None:
            raise SenderNotAuthorised()
        d = hold_reason_for(self._store, self._clock, credential, server)
        return d.addCallback(self._enqueue, commit, credential, server, domain)

    def _enqueue(self, hold_reason, commit: _Commit, credential, server, domain):
        envelope = MessageEnvelope(
            token=commit.token, server_id=server.id, credential_id=credential.id,
            mail_from=commit.mail_from, rcpt_to=commit.recipients, sender_domain=domain,
            protocol=commit.protocol, status="held" if hold_reason else "queued",
            hold_reason=hold_reason)
        return self._store.enqueue(envelope, commit.message.spool)


@dataclass(frozen=True, slots=True)
class _Commit:
    """What L{SubmissionCore.finish} carries from one look-up to the next."""

    message: IncomingMessage
    fields: list
    token: str
    mail_from: str
    recipients: tuple
    protocol: str


def _closing(result, message: IncomingMessage):
    message.close()
    return result


def hold_reason_for(store, clock, credential, server):
    """Why a new message must be held rather than relayed, or C{None}.

    @return: Deferred firing with a short text or C{None}.
    """
    if credential.hold:
        return defer.succeed("credential on hold")
    if server.mode == "development":
        return defer.succeed("server in development mode")
    if server.send_limit is None:
        return defer.succeed(None)
    limit = server.send_limit
    d = store.messages_since(server.id, clock.seconds() - SEND_LIMIT_WINDOW)
    return d.addCallback(lambda count: "send limit reached" if count >= limit else None)


@functools.lru_cache(maxsize=8)
def _by_host(hostname: str):
    # One pattern per host name, not one per message.
    return re.compile(r"(?:^|[\s;(])by\s+" + re.escape(hostname) + r"(?![\w.-])",
                      re.IGNORECASE)


def own_received_count(fields, hostname: str) -> int:
    """How many Received fields name C{by <hostname>}."""
    pattern = _by_host(hostname)
    return sum(1 for name, value in fields if name == "received" and pattern.search(value))


def missing_fields(fields, *, hostname: str, token: str, clock) -> bytes:
    """The C{Date} and C{Message-ID} fields a message lacks (RFC 5322
    section 3.6: every message has exactly one C{Date}, and should have a
    C{Message-ID}), as CRLF-terminated lines: the date is now, the
    identifier C{<queue id@our host name>}, unique as the queue id is (RFC
    5322 section 3.6.4). A DKIM signature covers both (see docs/dkim.md),
    so they must exist before the message is signed."""
    names = {name for name, _ in fields}
    added = b""
    if "date" not in names:
        date = message_date(clock.seconds())
        added += f"Date: {date}\r\n".encode("ascii")
    if "message-id" not in names:
        added += f"Message-ID: <{token}@{hostname}>\r\n".encode("ascii", "replace")
    return added


def message_date(when: float) -> str:
    """C{when} as an RFC 5322 date-time (section 3.3) in UTC, to the second.

    Every message gets one or two of these (Received, and Date when it has
    none), and many messages share a second: the text is made once per
    second."""
    return _date_of_second(int(when))


@functools.lru_cache(maxsize=1)
def _date_of_second(second: int) -> str:
    return format_datetime(datetime.fromtimestamp(second, UTC))


def received_header(hostname: str, protocol: str, token: str, when: float, *,
                    client_ip: str | None = None, helo: str | None = None,
                    privacy: bool = False) -> bytes:
    """The trace header prepended to every accepted message (the wire
    contract's §6; RFC 3848 protocol words, or C{HTTP}).

    Without C{client_ip} (or with C{privacy}) only the C{by} part is written.
    """
    date = message_date(when)
    by = f"by {hostname} with {protocol} id {token}; {date}"
    if privacy or client_ip is None:
        return f"Received: {by}\r\n".encode()
    return f"Received: from {helo or client_ip} ({client_ip} [{client_ip}]) {by}\r\n".encode(
        "utf-8", "replace")
