"""Frozen values of the tenancy model and the queue (docs/smtp.md §1 and §8).

These are what the store hands out; nothing here talks to a database. A
credential's key is kept out of every repr, so that a value logged by mistake
does not leak a secret.
"""
from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass, field

PERMALINK_RE = re.compile(r"^[a-z0-9-]+\Z")

CREDENTIAL_TYPES = ("smtp", "smtp-ip", "api")
SERVER_MODES = ("live", "development")
QUEUE_STATUSES = ("queued", "sent", "failed", "held")

_KEY_ALPHABET = string.ascii_letters + string.digits
_TOKEN_ALPHABET = string.ascii_uppercase + string.digits


def _random_text(alphabet: str, length: int) -> str:
    """C{length} characters of C{alphabet}, uniformly, from as few CSPRNG reads
    as possible (bytes past the largest multiple of the alphabet's size are
    dropped, so no character is more likely than another)."""
    limit = 256 - 256 % len(alphabet)
    out = []
    while len(out) < length:
        out += [alphabet[b % len(alphabet)] for b in secrets.token_bytes(length * 2)
                if b < limit]
    return "".join(out[:length])


def generate_key(length: int = 24) -> str:
    """A credential key: C{length} characters of [A-Za-z0-9] from a CSPRNG."""
    return _random_text(_KEY_ALPHABET, length)


def generate_token(length: int = 8) -> str:
    """A trace id or queue id: C{length} characters of [A-Z0-9] from a CSPRNG."""
    return _random_text(_TOKEN_ALPHABET, length)


def valid_permalink(value: str) -> bool:
    return bool(PERMALINK_RE.match(value))


@dataclass(frozen=True)
class Organization:
    id: int
    permalink: str
    name: str
    suspended: bool = False


@dataclass(frozen=True)
class Server:
    id: int
    organization_id: int
    organization_permalink: str
    permalink: str
    name: str
    allow_sender_header: bool = False
    privacy_mode: bool = False
    mode: str = "live"
    suspended: bool = False
    organization_suspended: bool = False
    send_limit: int | None = None

    @property
    def full_name(self) -> str:
        return f"{self.organization_permalink}/{self.permalink}"

    @property
    def is_suspended(self) -> bool:
        return self.suspended or self.organization_suspended


@dataclass(frozen=True)
class Domain:
    id: int
    name: str
    server_id: int | None
    organization_id: int | None
    verified: bool = False
    use_for_any: bool = False
    #: "org/server" or "org", for display
    owner: str = ""
    #: the last periodic DNS check: its time (epoch seconds) and its result,
    #: "OK", "Missing", "Invalid" or "Error"; C{None} before the first
    dns_checked_at: float | None = None
    dns_status: str | None = None


@dataclass(frozen=True)
class DKIMKey:
    """One DKIM key of a domain (RFC 6376): published at
    C{<selector>._domainkey.<domain>}. The active key signs; retiring keys,
    replaced by a rotation, stay published until the rotation is finished.
    The private key (PKCS#8 PEM) is kept out of every repr."""
    id: int
    domain_id: int
    #: the domain's name
    domain: str
    selector: str
    #: "rsa" or "ed25519" (RFC 8463)
    algorithm: str
    retiring: bool
    created_at: float
    private_key: str = field(repr=False)

    @property
    def dns_name(self) -> str:
        """Where the key's TXT record is published (RFC 6376 section 3.6.2.1)."""
        return f"{self.selector}._domainkey.{self.domain}"


@dataclass(frozen=True)
class Credential:
    id: int
    server_id: int
    type: str
    key: str = field(repr=False)
    name: str = ""
    hold: bool = False
    last_used_at: float | None = None


@dataclass(frozen=True)
class MessageEnvelope:
    """What is known of an accepted message before it is committed."""
    token: str
    server_id: int
    credential_id: int | None
    mail_from: str
    rcpt_to: tuple[str, ...]
    sender_domain: str | None
    protocol: str
    #: the status every recipient row starts in: "queued", or "held" with a reason
    status: str = "queued"
    hold_reason: str | None = None


@dataclass(frozen=True)
class QueueEntry:
    id: int
    message_id: int
    token: str
    server: str
    server_id: int
    credential_id: int | None
    mail_from: str
    rcpt_to: str
    status: str
    size: int
    domain: str | None
    created_at: float
    hold_reason: str | None = None
    attempts: int = 0
    next_attempt_at: float | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class DeliveryAttempt:
    """One try at delivering a queue entry, as the relay recorded it: which
    node tried, which remote host answered (C{None} when none was reached),
    its reply code (C{None} for a connection or DNS problem) and text."""
    queue_id: int
    attempted_at: float
    remote_host: str | None
    code: int | None
    text: str
    node: str | None = None


@dataclass(frozen=True)
class Claim:
    """A queue entry a relay node holds a lease on until C{locked_until}.

    C{age_from} is when the entry's retry clock started (its enqueue, or the
    operator's last release or retry): it is failed once it has kept failing
    temporarily for C{max_queue_age} from then."""
    entry: QueueEntry
    age_from: float
    locked_until: float


@dataclass(frozen=True)
class User:
    """A person who may sign in to the web interface (docs/web.md): an admin
    sees every organization, anyone else only C{organizations} (their
    permalinks). The password hash is kept out of every repr."""
    id: int
    email: str
    admin: bool = False
    organizations: tuple[str, ...] = ()
    password_hash: str | None = field(default=None, repr=False)

    @property
    def has_password(self) -> bool:
        return self.password_hash is not None

    def may_see(self, organization: str) -> bool:
        """Is the organization with permalink C{organization} this user's?"""
        return self.admin or organization in self.organizations


@dataclass(frozen=True)
class UserToken:
    """A signed-in session or a set-password link, as the store found it by
    the digest of its token: whose it is, until when, and (for a session)
    the CSRF token its forms carry, kept out of every repr."""
    user: User
    purpose: str
    expires_at: float
    csrf_token: str = field(default="", repr=False)


@dataclass(frozen=True)
class Webhook:
    """A server's webhook (docs/webhooks.md): where its events are sent, and
    which: C{all_events}, or the Postal event names in C{events}."""
    id: int
    uuid: str
    server_id: int
    #: "org/server", for display
    server: str
    name: str
    #: kept out of the repr: receivers often put a token in the query string
    url: str = field(repr=False)
    all_events: bool
    events: tuple[str, ...]
    enabled: bool
    created_at: float
    last_used_at: float | None = None


@dataclass(frozen=True)
class WebhookRequest:
    """One event for one webhook in the outbox: C{body} is what is sent and
    signed. C{status} is "pending" until it is "delivered" or "failed"
    (every retry used)."""
    id: int
    uuid: str
    webhook_id: int
    server: str
    event: str
    #: out of the repr, as L{Webhook}'s; so is the body, which can be large
    url: str = field(repr=False)
    body: bytes = field(repr=False)
    status: str
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    created_at: float


@dataclass(frozen=True)
class WebhookAttempt:
    """One try at sending a webhook request: the HTTP status the receiver
    answered (C{None} when none answered) or the error, and whether it was
    to be retried."""
    request_id: int
    attempted_at: float
    status_code: int | None
    error: str | None
    will_retry: bool
    node: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
