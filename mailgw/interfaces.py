"""The interfaces between the gateway's rooms.

The SMTP side reaches the store only through L{IDirectory} (tenancy look-ups)
and L{IQueue} (durable enqueue); the command line through L{IAdmin}. Every
method returns a Deferred. A Deferred that fails with L{StoreUnavailable} means
the database could not be reached or the transaction did not commit: the SMTP
side answers 451 and nothing was half-written.
"""
from zope.interface import Attribute, Interface


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The database did not answer or the transaction did not commit."""


class NotFound(StoreError, LookupError):
    """A named thing (organization, server, credential, …) does not exist."""


class Conflict(StoreError, ValueError):
    """The change would break a uniqueness or ownership rule."""


class IDirectory(Interface):
    """Tenancy look-ups on the SMTP and HTTP hot paths. Always current: a change
    made by the command line or another node is seen by the next call."""

    def credential_by_key(key, type):
        """The credential of type C{type} ("smtp" or "api") whose key is C{key}.

        The look-up goes by a digest of the key and the key is then compared in
        constant time.
        @return: Deferred firing with C{(Credential, Server)} or C{None}.
        """

    def credential_by_id(credential_id):
        """The credential with that id and its server, as they are now.

        @return: Deferred firing with C{(Credential, Server)} or C{None}.
        """

    def credentials_of_server(organization, server, type):
        """A server by its permalinks, with its credentials of C{type}.

        @return: Deferred firing with C{(Server, [Credential, ...])} or C{None}
            when there is no such server.
        """

    def credential_for_address(address):
        """The C{smtp-ip} credential whose network holds C{address} (a str IPv4
        or IPv6 address); the most specific network wins, and an IPv4 network
        holds an IPv4-mapped IPv6 address.

        @return: Deferred firing with C{(Credential, Server)} or C{None}.
        """

    def server_by_id(server_id):
        """@return: Deferred firing with the current L{Server} or C{None}."""

    def authorised_domains(server_id):
        """The verified domains a server may send as (its own and its
        organization's, normalised), and the verified C{use_for_any} domain it
        owns, if any (the first by name when there are several).

        @return: Deferred firing with C{(frozenset of names, name or None)}.
        """

    def touch_credential(credential_id, when):
        """Record C{when} (epoch seconds) as the credential's C{last_used_at}.

        @return: Deferred firing with C{None}.
        """

    def messages_since(server_id, since):
        """@return: Deferred firing with the number of messages the server has
        had accepted since C{since} (epoch seconds)."""


class IQueue(Interface):
    """The durable queue of accepted messages."""

    def enqueue(envelope, body):
        """Store the body read from C{body} (a binary file object, read from its
        start; the engine may read it on another thread) and one queue entry
        per recipient of C{envelope} (a L{mailgw.model.MessageEnvelope}), in one
        transaction. When the Deferred fires the commit is durable.

        @return: Deferred firing with C{{rcpt: queue entry id}}.
        """

    def list_entries(status=None, server=None, limit=None, newest_first=False):
        """Queue entries, oldest first (newest first with C{newest_first}:
        the web interface's recent queue), optionally filtered by status and
        by server full name (C{"org/server"}).

        @return: Deferred firing with a list of L{mailgw.model.QueueEntry}.
        """

    def get_entry(entry_id):
        """@return: Deferred firing with a L{mailgw.model.QueueEntry}.
        @raise NotFound: (as a failure) no such entry."""

    def queue_counts():
        """@return: Deferred firing with C{{status: number of entries}}."""

    def ping():
        """A trivial query. @return: Deferred firing with None when the
        database answers (failing with StoreUnavailable when it does not)."""

    def read_body(message_id):
        """@return: Deferred firing with the stored message bytes."""


class IAdmin(Interface):
    """The operator's changes to the tenancy model (the C{mailgw} command)."""

    def upgrade():
        """Apply the schema files not yet applied, in order.
        @return: Deferred firing with the list of versions applied."""

    def schema_version():
        """The newest schema version applied, read without changing anything
        (C{mailgw config check}).
        @return: Deferred firing with the version, 0 for a database never
            upgraded."""

    def add_organization(permalink, name):
        """@return: Deferred firing with the new L{mailgw.model.Organization}."""

    def list_organizations():
        """@return: Deferred firing with a list of organizations."""

    def set_organization_suspended(permalink, suspended):
        """@return: Deferred firing with the updated organization."""

    def add_server(organization, permalink, name, **flags):
        """@return: Deferred firing with the new L{mailgw.model.Server}."""

    def update_server(organization, permalink, **changes):
        """Change flags (allow_sender_header, privacy_mode, mode, send_limit,
        suspended). @return: Deferred firing with the updated server."""

    def get_server(organization, permalink):
        """@return: Deferred firing with the server.
        @raise NotFound: (as a failure) no such server."""

    def list_servers(organization=None):
        """@return: Deferred firing with a list of servers."""

    def add_domain(name, server=None, organization=None, verified=False,
                   use_for_any=False):
        """Add a domain owned by C{server} (C{(org, server)}) or by
        C{organization} (a permalink). @return: Deferred firing with the
        L{mailgw.model.Domain}."""

    def list_domains(server=None, organization=None):
        """@return: Deferred firing with a list of domains."""

    def set_domain_verified(domain_id, verified):
        """@return: Deferred firing with the updated domain."""

    def remove_domain(domain_id):
        """@return: Deferred firing with C{None}."""

    def add_credential(server, type, key, name="", hold=False):
        """@param server: C{(org, server)} permalinks.
        @return: Deferred firing with the new L{mailgw.model.Credential}."""

    def list_credentials(server):
        """@return: Deferred firing with the credentials of C{(org, server)}."""

    def set_credential_hold(credential_id, hold):
        """@return: Deferred firing with the updated credential."""

    def remove_credential(credential_id):
        """@return: Deferred firing with C{None}."""

    # DKIM keys and verification tokens: C{domain} is a domain's id (an
    # C{int}) or its name, when only one owner has that name (else Conflict).

    def dkim_keys(domain):
        """@return: Deferred firing with the domain's
        L{mailgw.model.DKIMKey}s, the active one first, then the retiring
        ones, newest first."""

    def rotate_dkim(domain, algorithm="rsa"):
        """Generate a new key of C{algorithm} (C{"rsa"} or C{"ed25519"})
        under a new selector and mark the domain's others of that algorithm
        retiring (still listed, still to be published).
        @return: Deferred firing with the new L{mailgw.model.DKIMKey}."""

    def finish_dkim_rotation(domain):
        """Delete the domain's retiring keys.
        @return: Deferred firing with the deleted L{mailgw.model.DKIMKey}s."""

    def claim_dns_checks(now, interval, limit):
        """Claim up to C{limit} domains whose periodic DNS check is due
        (never claimed, or last claimed C{interval} seconds before C{now}
        or earlier), for this node alone.
        @return: Deferred firing with the claimed L{mailgw.model.Domain}s."""

    def record_dns_check(domain_id, checked_at, status, records):
        """Keep a DNS check's result: C{status} (C{"OK"}, C{"Missing"},
        C{"Invalid"} or C{"Error"}) and C{records}, each record's result as
        JSON text. @return: Deferred firing with C{None}."""

    def dns_check_result(domain):
        """@return: Deferred firing with C{(Domain, records JSON text or
        None)}: the last check kept by L{record_dns_check}."""

    def domain_verification_token(domain):
        """@return: Deferred firing with the token of the domain's ownership
        TXT record (C{mailgw-verification <token>}); one is set if it has none."""

    # The failure throttle's notice board (docs/operations.md): what each
    # node's throttle has locked out, and the operator's clears. The
    # throttles in memory decide; these rows only show and clear them.

    def record_lockout(address, node, kind, locked_until, failures):
        """Record (or renew) that C{node}'s throttle of C{kind} (C{"key"} or
        C{"anonymous"}) locked out the client key C{address} (C{192.0.2.1},
        C{2001:db8:1:2::/64}) until C{locked_until} (epoch seconds) after
        C{failures} failures. Expired lock-outs of any node go at the same
        time. @return: Deferred firing with C{None}."""

    def list_lockouts():
        """The lock-outs still in force, of every node, by address, kind, node.

        @return: Deferred firing with a list of L{mailgw.store.base.Lockout}.
        """

    def clear_lockouts(address):
        """Remove every node's lock-outs of the client key C{address} and
        record a clear of it for the running nodes to apply (see
        L{throttle_clears_after}); clears older than a day are dropped.

        @return: Deferred firing with the number of lock-outs in force removed.
        """

    def throttle_clears_after(clear_id):
        """The clears recorded after the one with id C{clear_id}, oldest first.
        Ids only grow, and a clear becomes visible only after every clear
        with a smaller id, so a poller that remembers the last id it read
        misses none.

        @return: Deferred firing with a list of L{mailgw.store.base.ThrottleClear}.
        """

    def latest_throttle_clear():
        """@return: Deferred firing with the id of the newest clear (0 when
        there is none): where a node that starts begins to read."""

    def forget_lockouts(node):
        """Remove C{node}'s lock-outs (the node is stopping: they end with it).

        @return: Deferred firing with C{None}."""


class IRelayQueue(Interface):
    """What the relay (and the operator's queue verbs) do to the queue.

    A node claims due entries with a lease; only the node that holds an
    entry (C{locked_by}) may settle it, so an entry is delivered by one node
    at a time and, when a node dies, taken over once its lease has passed.
    Times are epoch seconds passed in by the caller (the relay's clock).
    """

    def claim_due(node_id, now, lease, limit):
        """Take up to C{limit} entries that are queued, due (C{next_attempt_at
        <= now}) and not leased to a node (or whose lease has passed), oldest
        due first, leasing them to C{node_id} until C{now + lease}. Safe when
        several nodes claim at once: each entry goes to one of them.

        @return: Deferred firing with a list of L{mailgw.model.Claim}.
        """

    def renew_leases(node_id, entry_ids, until):
        """Extend to C{until} the leases C{node_id} still holds among C{entry_ids}.

        @return: Deferred firing with the number of entries renewed.
        """

    def release_leases(node_id, entry_ids):
        """Give back, unsettled, the entries of C{entry_ids} C{node_id} holds
        (a node stopping): another node may claim them at once.

        @return: Deferred firing with the number of entries released.
        """

    def read_body_chunk(message_id, seq):
        """One stored piece of a message body (pieces are numbered from 0 and
        at most L{mailgw.store.base.CHUNK_SIZE} bytes).

        @return: Deferred firing with the bytes, or C{None} past the end (or
            when the message is gone).
        """

    def record_attempt(attempt):
        """Store a L{mailgw.model.DeliveryAttempt}, count it in the entry's
        C{attempts} and keep its text as C{last_error} (cleared by a 2xx).

        @return: Deferred firing with C{False} when the entry is gone, else C{True}.
        """

    def mark_sent(entry_id, node_id, attempt):
        """Record C{attempt} and set the entry C{sent}, releasing its lease.

        @return: Deferred firing with C{True}, or C{False} (and the status
            untouched) when C{node_id} no longer holds a queued entry.
        """

    def mark_retry(entry_id, node_id, attempt, next_attempt_at):
        """Record C{attempt}; the entry stays C{queued}, due at C{next_attempt_at}.

        @return: Deferred firing with C{True}, or C{False} as for L{mark_sent}.
        """

    def mark_failed(entry_id, node_id, attempt, bounce=None):
        """Record C{attempt}, set the entry C{failed} and, in the same
        transaction, enqueue C{bounce} (C{(MessageEnvelope, bytes)}) when
        given, so that a failure produces exactly one bounce.

        @return: Deferred firing with C{True}, or C{False} (no bounce queued)
            as for L{mark_sent}.
        """

    def mark_held(entry_id, node_id, attempt, reason):
        """Record C{attempt} and set the entry C{held} with C{reason}
        (released by the operator), releasing its lease.

        @return: Deferred firing with C{True}, or C{False} as for L{mark_sent}.
        """

    def signing_keys(server_id, domain):
        """The active DKIM keys a message of server C{server_id} from
        C{domain} (a name) is signed with: those of the domain of that name
        owned by the server, else by its organization.

        @return: Deferred firing with a list of L{mailgw.model.DKIMKey}s
            (empty when the domain has no active key).
        @raise NotFound: (as a failure) neither owns such a domain.
        """

    def get_attempts(entry_id):
        """@return: Deferred firing with the entry's L{mailgw.model.DeliveryAttempt}s,
            oldest first. @raise NotFound: (as a failure) no such entry."""

    def release_entry(entry_id):
        """A C{held} entry back to C{queued}, due now, its retry clock restarted.

        @return: Deferred firing with the updated L{mailgw.model.QueueEntry}.
        @raise NotFound: no such entry. @raise Conflict: it is not held.
        """

    def retry_entry(entry_id):
        """A C{failed} or C{queued} entry due now (C{queued}), its retry clock
        restarted. @return: Deferred firing with the updated entry.
        @raise NotFound: no such entry. @raise Conflict: it is sent or held.
        """

    def remove_entry(entry_id):
        """Delete an entry (and its attempts); its message too when no other
        recipient of it remains. @return: Deferred firing with C{None}.
        @raise NotFound: no such entry."""

    # A message by its queue id: the token of C{250 OK: queued as <token>}
    # and of the HTTP API's answer, which names the message with every one
    # of its entries (one per recipient).

    def message_entries(token):
        """The entries of the message whose queue id is C{token}, by id.

        @return: Deferred firing with a non-empty list of
            L{mailgw.model.QueueEntry}.
        @raise NotFound: (as a failure) no such message.
        """

    def release_message(token):
        """L{release_entry} for every C{held} entry of the message, at once.

        @return: Deferred firing with the updated entries.
        @raise NotFound: no such message. @raise Conflict: none of its entries
            is held.
        """

    def retry_message(token):
        """L{retry_entry} for every C{failed} or C{queued} entry of the
        message, at once.

        @return: Deferred firing with the updated entries.
        @raise NotFound: no such message. @raise Conflict: none of its entries
            is failed or queued.
        """

    def remove_message(token):
        """Delete the message with every one of its entries and their attempts.

        @return: Deferred firing with the entries removed, as they were.
        @raise NotFound: no such message.
        """

    # A server's own message, as the HTTP API's message routes show it.

    def message_for_server(server_id, ref):
        """The message of server C{server_id} named by C{ref}: a queue entry
        id (an int) or a queue id (the token, a str, case-sensitive).

        @return: Deferred firing with a L{mailgw.store.base.ServerMessage}:
            the entry with that id, or every entry of the message with that
            token (by id), and their attempts, oldest first.
        @raise NotFound: (as a failure) no such entry or message, or one of
            another server.
        """


class IUsers(Interface):
    """The web interface's users, their organizations, sessions and
    set-password links (docs/web.md). C{ref} is a user's id (an C{int}) or
    e-mail address; tokens are named by their SHA-256 digest only."""

    def add_user(email, admin=False, organizations=()):
        """@param organizations: permalinks the user is a member of.
        @return: Deferred firing with the new L{mailgw.model.User}.
        @raise Conflict: (as a failure) the address has a user already.
        @raise NotFound: (as a failure) an organization does not exist."""

    def list_users():
        """@return: Deferred firing with every L{mailgw.model.User}, by address."""

    def get_user(ref):
        """@return: Deferred firing with the L{mailgw.model.User}, or failing
        with L{NotFound}."""

    def remove_user(ref):
        """Remove the user, their memberships and sessions.
        @return: Deferred firing with C{None}, or failing with L{NotFound}."""

    def grant_organization(ref, organization):
        """Make the user a member of the organization C{organization}.
        @return: Deferred firing with the updated L{mailgw.model.User}."""

    def set_user_password(ref, password_hash):
        """Store a new password hash; every session and link of the user ends.
        @return: Deferred firing with the updated L{mailgw.model.User}."""

    def add_user_token(ref, digest, purpose, expires_at, csrf_token=""):
        """Record a C{"session"} (with its CSRF token) or a C{"set_password"}
        link by its token's digest, valid until C{expires_at}.
        @return: Deferred firing with the L{mailgw.model.User}."""

    def user_token(digest, purpose):
        """@return: Deferred firing with the L{mailgw.model.UserToken} whose
        token has this digest, or failing with L{NotFound} (none, or expired)."""

    def remove_user_token(digest):
        """End a session or a link. @return: Deferred firing with C{None}."""

    def set_password_with_token(digest, password_hash):
        """Use a set-password link once: set the password, end the link and
        every session of its user.
        @return: Deferred firing with the L{mailgw.model.User}, or failing
        with L{NotFound} (no such link, used, or expired)."""


class IWebhookStore(Interface):
    """A server's webhooks and the durable outbox of their requests
    (docs/webhooks.md). Events are written by the transactions that cause
    them (the relay's settles, the enqueue of a held message); a node claims
    due requests with a lease, as the relay claims queue entries."""

    def add_webhook(server, url, name="", events=(), all_events=False):
        """A new, enabled webhook of C{server} (an C{(org, server)} pair).

        @param events: Postal event names (L{mailgw.webhooks.payloads.EVENTS}).
        @return: Deferred firing with the L{mailgw.model.Webhook}.
        @raise NotFound: no such server. @raise ValueError: an unknown event,
            or neither events nor C{all_events}.
        """

    def list_webhooks(server=None):
        """@return: Deferred firing with the L{mailgw.model.Webhook}s (of
        C{server}), by id."""

    def get_webhook(ref):
        """The webhook whose id (an int) or uuid (a str) is C{ref}.

        @return: Deferred firing with a L{mailgw.model.Webhook}.
        @raise NotFound: none.
        """

    def set_webhook_enabled(ref, enabled):
        """@return: Deferred firing with the updated L{mailgw.model.Webhook};
        a disabled webhook gets no new requests (pending ones are still sent)."""

    def remove_webhook(ref):
        """Remove a webhook with its requests and their attempts.

        @return: Deferred firing with the removed L{mailgw.model.Webhook}.
        """

    def trigger_webhook(server_id, event, payload):
        """Write C{event} with C{payload} (a JSON-able dict) for each enabled
        webhook of the server that wants it.

        @return: Deferred firing with the number of requests written.
        """

    def claim_webhook_requests(node_id, now, lease, limit):
        """Claim up to C{limit} due pending requests for C{node_id} until
        C{now + lease}; concurrent nodes claim disjoint sets.

        @return: Deferred firing with L{mailgw.model.WebhookRequest}s.
        """

    def renew_webhook_leases(node_id, request_ids, until):
        """@return: Deferred firing with how many leases of C{node_id} now run
        until C{until}."""

    def release_webhook_leases(node_id, request_ids):
        """Give claimed requests back at once (a stop).

        @return: Deferred firing with how many were given back.
        """

    def settle_webhook_request(request_id, node_id, attempt, next_attempt_at=None):
        """Record C{attempt} (a L{mailgw.model.WebhookAttempt}); the request
        becomes delivered (a 2xx), pending again until C{next_attempt_at}, or
        failed (C{None}: no retry left) — if C{node_id} still holds it.

        @return: Deferred firing with whether it did.
        """

    def list_webhook_requests(server=None, webhook=None, status=None, limit=None):
        """The outbox, newest first, with each request's attempts.

        @return: Deferred firing with C{[(WebhookRequest, (WebhookAttempt,
            ...)), ...]}.
        """

    def webhook_outbox_counts():
        """@return: Deferred firing with C{{status: requests}}."""

    def prune_webhook_requests(before):
        """Delete delivered and failed requests last changed before C{before}.

        @return: Deferred firing with how many went.
        """

    def webhook_signing_key():
        """The platform's webhook signing key (PKCS#8 PEM), generated and
        stored on first use; every node gets the same one.

        @return: Deferred firing with the PEM text.
        """


class IStore(IDirectory, IQueue, IAdmin, IRelayQueue, IUsers, IWebhookStore):
    """One engine (SQLite or PostgreSQL) behind every store interface."""

    engine = Attribute("'sqlite' or 'postgresql'")

    def start():
        """Open the connections. @return: Deferred firing when ready."""

    def close():
        """Close the connections. @return: Deferred firing when closed."""


class ISubmissionDelivery(Interface):
    """The avatar of an authenticated SMTP session, bound to one tenant server.

    Twisted's C{IMessageDelivery} hands out one C{IMessage} per recipient and
    feeds it line by line; a submission gateway stores one copy per message
    and streams the body in chunks, so the avatar speaks in transactions.
    """

    identity = Attribute("the mailgw.auth.checkers.Identity it acts for")

    def check_recipient(address):
        """May the session's server send now? Re-reads the server, so a
        suspension applies to the next RCPT.

        @return: Deferred firing with None, or failing with an SMTPReply
            (C{535 Mail server has been suspended}).
        """

    def open_message(mail_from, recipients):
        """Start receiving the body of one message.

        @return: an object with C{write(bytes)}, C{finish()} (Deferred firing
            with the queue id once committed, or failing with an SMTPReply)
            and C{abort()}.
        """

    def logout():
        """The session ended or re-authenticated."""


class IAPIClient(Interface):
    """The avatar of an HTTP API request authenticated by an C{api} key."""

    identity = Attribute("the mailgw.auth.checkers.Identity it acts for")

    def logout():
        """The request is answered."""
