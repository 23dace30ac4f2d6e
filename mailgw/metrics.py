"""What the gateway counts, for Prometheus: one L{Metrics} object per
gateway (its own registry, so tests and several gateways in one process do not
collide), handed to every part that counts something.

Label values are bounded: verbs outside the known set count as "other", so a
client cannot grow the series without limit. L{TimedStore} times every store
operation, labelled with the operation's name (a fixed set: the methods of
L{mailgw.interfaces.IStore}).
"""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from zope.interface import implementer

from mailgw.interfaces import IStore

KNOWN_VERBS = frozenset({
    "HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "STARTTLS", "AUTH",
    "VRFY", "EXPN", "HELP", "BDAT", "ETRN"})


class Metrics:
    """The gateway's counters, gauges and histograms, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.connections = Counter("mailgw_smtp_connections", "SMTP connections accepted",
                                   registry=r)
        self.open_connections = Gauge("mailgw_smtp_open_connections",
                                      "SMTP connections open now", registry=r)
        self.refused_connections = Counter(
            "mailgw_smtp_refused_connections", "Connections refused at connect",
            ["reason"], registry=r)
        self.tls_handshakes = Counter("mailgw_tls_handshakes", "TLS handshakes completed",
                                      registry=r)
        self.commands = Counter("mailgw_smtp_commands", "SMTP commands received", ["verb"],
                                registry=r)
        self._verbs = {}
        self.auth = Counter("mailgw_smtp_auth", "Authentication attempts",
                            ["mechanism", "result"], registry=r)
        self.client_errors = Counter("mailgw_smtp_client_errors",
                                     "Replies that refused a client's command", ["reason"],
                                     registry=r)
        self.messages = Counter("mailgw_messages", "Messages at the final dot",
                                ["result", "reason"], registry=r)
        #: the child every accepted message counts in (bound once: per message)
        self.messages_queued = self.messages.labels("accepted", "queued")
        self.queue_entries = Gauge("mailgw_queue_entries", "Queue entries by status",
                                   ["status"], registry=r)
        self.relay = Counter("mailgw_relay_deliveries", "Relay delivery attempts by outcome",
                             ["outcome"], registry=r)
        self.webhooks = Counter(
            "mailgw_webhook_deliveries", "Webhook request attempts by outcome (delivered, "
            "retry, failed) and requests refused before sending (refused)", ["outcome"],
            registry=r)
        self.webhook_outbox = Gauge("mailgw_webhook_outbox",
                                    "Webhook requests in the outbox by status", ["status"],
                                    registry=r)
        self.http_refused_connections = Counter(
            "mailgw_http_refused_connections",
            "HTTP API connections closed at connect by a connection cap", ["reason"],
            registry=r)
        self.http_timeouts = Counter(
            "mailgw_http_timeouts",
            "HTTP API connections closed by a timeout (idle, headers or body)", ["reason"],
            registry=r)
        self.web_refusals = Counter(
            "mailgw_web_refusals",
            "Web interface requests refused (docs/web.md), by reason", ["reason"],
            registry=r)
        self.web_logins = Counter("mailgw_web_logins", "Web interface sign-ins by result",
                                  ["result"], registry=r)
        self.store_seconds = Histogram(
            "mailgw_store_seconds", "Store operation latency", ["operation"], registry=r,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.tls_certificate_expiry = Gauge(
            "mailgw_tls_certificate_expiry_seconds",
            "When the served TLS certificate expires (its notAfter), in seconds since "
            "the epoch", registry=r)
        self.domain_dns_status = Gauge(
            "mailgw_domain_dns_status",
            "1 for the status of each domain's last periodic DNS check (OK, Missing, "
            "Invalid, Error), 0 for the others", ["domain", "owner", "status"], registry=r)
        self.domain_dns_checks = Counter(
            "mailgw_domain_dns_checks", "Periodic DNS checks of domains by result",
            ["status"], registry=r)

    def command(self, verb: str) -> None:
        """Count one SMTP command; a verb outside L{KNOWN_VERBS} as C{other}."""
        counter = self._verbs.get(verb)
        if counter is None:
            counter = self.commands.labels(verb if verb in KNOWN_VERBS else "other")
            if verb in KNOWN_VERBS:
                self._verbs[verb] = counter  # bound once: this runs per command
        counter.inc()


def _timed(name: str):
    """The L{TimedStore} method C{name}: the store's own, its latency observed
    under the operation label C{name} when its Deferred fires, success or
    failure."""
    def timed(self, *args, **kwargs):
        histogram = self._histograms.get(name)
        if histogram is None:
            # labelled on first use, so that only operations that ran show up
            histogram = self._histograms[name] = self._histogram.labels(name)
        start = time.perf_counter()
        d = getattr(self._store, name)(*args, **kwargs)

        def observe(result):
            histogram.observe(time.perf_counter() - start)
            return result
        return d.addBoth(observe)
    timed.__name__ = name
    timed.__qualname__ = f"TimedStore.{name}"
    timed.__doc__ = f"L{{IStore.{name}}}, timed."
    return timed


@implementer(IStore)
class TimedStore:
    """The store, with each operation's latency observed in
    L{Metrics.store_seconds}, labelled with the operation's name. Every
    method of L{IStore} is named here, so that a reader (or grep) can follow
    each store call; C{tests/test_metrics.py} checks none is missing."""

    def __init__(self, store, metrics: Metrics):
        """
        @param store: the L{IStore} that does the work.
        @param metrics: whose C{store_seconds} histogram observes it.
        """
        self._store = store
        self._histogram = metrics.store_seconds
        self._histograms = {}   # operation name -> its labelled histogram

    @property
    def engine(self):
        """The store's C{engine}."""
        return self._store.engine

    # IStore
    start = _timed("start")
    close = _timed("close")

    # IDirectory
    credential_by_key = _timed("credential_by_key")
    credential_by_id = _timed("credential_by_id")
    credentials_of_server = _timed("credentials_of_server")
    credential_for_address = _timed("credential_for_address")
    server_by_id = _timed("server_by_id")
    authorised_domains = _timed("authorised_domains")
    touch_credential = _timed("touch_credential")
    messages_since = _timed("messages_since")

    # IQueue
    enqueue = _timed("enqueue")
    list_entries = _timed("list_entries")
    get_entry = _timed("get_entry")
    queue_counts = _timed("queue_counts")
    ping = _timed("ping")
    read_body = _timed("read_body")

    # IAdmin
    upgrade = _timed("upgrade")
    schema_version = _timed("schema_version")
    add_organization = _timed("add_organization")
    list_organizations = _timed("list_organizations")
    set_organization_suspended = _timed("set_organization_suspended")
    add_server = _timed("add_server")
    update_server = _timed("update_server")
    get_server = _timed("get_server")
    list_servers = _timed("list_servers")
    add_domain = _timed("add_domain")
    list_domains = _timed("list_domains")
    set_domain_verified = _timed("set_domain_verified")
    remove_domain = _timed("remove_domain")
    add_credential = _timed("add_credential")
    list_credentials = _timed("list_credentials")
    set_credential_hold = _timed("set_credential_hold")
    remove_credential = _timed("remove_credential")
    # DKIM keys and verification tokens
    dkim_keys = _timed("dkim_keys")
    rotate_dkim = _timed("rotate_dkim")
    finish_dkim_rotation = _timed("finish_dkim_rotation")
    domain_verification_token = _timed("domain_verification_token")
    claim_dns_checks = _timed("claim_dns_checks")
    record_dns_check = _timed("record_dns_check")
    dns_check_result = _timed("dns_check_result")
    record_lockout = _timed("record_lockout")
    list_lockouts = _timed("list_lockouts")
    clear_lockouts = _timed("clear_lockouts")
    throttle_clears_after = _timed("throttle_clears_after")
    latest_throttle_clear = _timed("latest_throttle_clear")
    forget_lockouts = _timed("forget_lockouts")

    # IRelayQueue
    claim_due = _timed("claim_due")
    renew_leases = _timed("renew_leases")
    release_leases = _timed("release_leases")
    read_body_chunk = _timed("read_body_chunk")
    record_attempt = _timed("record_attempt")
    mark_sent = _timed("mark_sent")
    mark_retry = _timed("mark_retry")
    mark_failed = _timed("mark_failed")
    mark_held = _timed("mark_held")
    signing_keys = _timed("signing_keys")
    get_attempts = _timed("get_attempts")
    release_entry = _timed("release_entry")
    retry_entry = _timed("retry_entry")
    remove_entry = _timed("remove_entry")
    message_entries = _timed("message_entries")
    release_message = _timed("release_message")
    retry_message = _timed("retry_message")
    remove_message = _timed("remove_message")
    message_for_server = _timed("message_for_server")

    # IUsers
    add_user = _timed("add_user")
    list_users = _timed("list_users")
    get_user = _timed("get_user")
    remove_user = _timed("remove_user")
    grant_organization = _timed("grant_organization")
    set_user_password = _timed("set_user_password")
    add_user_token = _timed("add_user_token")
    user_token = _timed("user_token")
    remove_user_token = _timed("remove_user_token")
    set_password_with_token = _timed("set_password_with_token")

    # IWebhookStore
    add_webhook = _timed("add_webhook")
    list_webhooks = _timed("list_webhooks")
    get_webhook = _timed("get_webhook")
    set_webhook_enabled = _timed("set_webhook_enabled")
    remove_webhook = _timed("remove_webhook")
    trigger_webhook = _timed("trigger_webhook")
    claim_webhook_requests = _timed("claim_webhook_requests")
    renew_webhook_leases = _timed("renew_webhook_leases")
    release_webhook_leases = _timed("release_webhook_leases")
    settle_webhook_request = _timed("settle_webhook_request")
    list_webhook_requests = _timed("list_webhook_requests")
    webhook_outbox_counts = _timed("webhook_outbox_counts")
    prune_webhook_requests = _timed("prune_webhook_requests")
    webhook_signing_key = _timed("webhook_signing_key")
