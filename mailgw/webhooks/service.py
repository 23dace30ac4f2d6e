"""The webhook sender: an C{IService} that claims due requests of the outbox
for this node and sends them, C{concurrency} at a time (docs/webhooks.md).

At start it reads the platform's signing key from the store (generating it
the first time). Every C{poll_interval} (and at once after L{wake}) it
claims due requests for its free slots, with a lease of C{lease} seconds
that it renews while they are in flight; a node that dies leaves leases that
pass, and another node takes the requests over. Each attempt is recorded;
a failed one is retried after the next of C{retry_delays} (Postal's
schedule by default), and after the last the request is failed. A
destination refused by the private address check fails the request at once.
Stopping waits for the attempts under way, then gives back what is left.
"""
from __future__ import annotations

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mailgw.config import WebhooksConfig
from mailgw.model import WebhookAttempt
from mailgw.relay.service import default_node_id
from mailgw.webhooks.addresses import shown_url
from mailgw.webhooks.sender import RequestSender, tls_policy
from mailgw.webhooks.signing import RequestSigner

log = Logger()

#: seconds between removals of old delivered and failed requests
PRUNE_INTERVAL = 3600.0
#: seconds before the signing key is read again after a failure
KEY_RETRY = 30.0


def next_attempt(now: float, attempts: int, delays) -> float | None:
    """When a request whose C{attempts}-th attempt just failed is tried
    again, or C{None} when no retry is left.

    >>> next_attempt(0, 1, (120, 180))
    120
    >>> next_attempt(0, 3, (120, 180)) is None
    True
    """
    if 1 <= attempts <= len(delays):
        return now + delays[attempts - 1]
    return None


class WebhookService(service.Service):
    """Sends this node's share of the outbox (see the module docstring).

    @param sender: what sends one request (default: a L{RequestSender} over
        treq, made at start once the signing key is known); tests pass one.
    @param policy: the https policy of the default sender (default: from
        C{config.ca_certificates}, read now: before twistd drops privileges).
    """

    name = "webhooks"

    def __init__(self, store, config: WebhooksConfig, reactor, node_id: str | None = None,
                 hostname: str = "localhost", *, clock=None, metrics=None, sender=None,
                 own=frozenset(), policy=None):
        self.store, self.config, self.reactor = store, config, reactor
        self.clock = clock or reactor
        self.node_id = node_id or default_node_id(hostname)
        self.metrics = metrics
        self.sender = sender
        self.own = own
        self.policy = policy if policy is not None or sender is not None else \
            tls_policy(config.ca_certificates)
        self.signer = None
        self._in_flight = {}  # request id -> the Deferred of its attempt
        self._claiming = None
        self._loops = []
        self._wake_call = None
        self._key_call = None
        self._reading = None  # the signing key's read (or first generation) under way
        self._stopping = False
        #: fires once the signing key is read and polling has begun
        self.started = defer.Deferred()

    # -- IService ----------------------------------------------------------------------

    def startService(self):
        super().startService()
        self._stopping = False
        if self.started.called:
            self.started = defer.Deferred()
        self._read_key()

    def _read_key(self):
        self._key_call = None
        if self._stopping:
            return
        d = self.store.webhook_signing_key() if self.sender is None else defer.succeed(None)
        d.addCallback(self._begin)

        def failed(failure):
            if self._stopping:
                return  # stopped meanwhile: nothing is to be sent anyway
            log.failure("webhooks: cannot read the signing key; nothing is sent by this node "
                        "until it can (trying again in {delay:g} s)", failure,
                        delay=KEY_RETRY)
            self._key_call = self.clock.callLater(KEY_RETRY, self._read_key)
        d.addErrback(failed)
        self._reading = d

        def read(result):
            self._reading = None
            return result
        d.addBoth(read)

    def _begin(self, private_pem):
        if self._stopping:
            return
        if self.sender is None:
            self.signer = RequestSigner(private_pem)
            self.sender = RequestSender(
                self.reactor, self.signer, allow_private=self.config.allow_private_addresses,
                timeout=self.config.timeout, policy=self.policy,
                clock=self.clock, own=self.own)
        for interval, fn, now in ((self.config.poll_interval, self._poll_once, True),
                                  (self.config.lease / 3, self._renew_leases, False),
                                  (PRUNE_INTERVAL, self._prune, True)):
            loop = LoopingCall(fn)
            loop.clock = self.clock
            loop.start(interval, now=now)
            self._loops.append(loop)
        log.info("webhooks {node} started: {n} requests at once, private addresses {allowed}"
                 "{kid}", node=self.node_id, n=self.config.concurrency,
                 allowed="allowed" if self.config.allow_private_addresses else "refused",
                 kid=f", signing key {self.signer.kid}" if self.signer else "")
        self.started.callback(None)

    @defer.inlineCallbacks
    def stopService(self):
        """Fires once nothing of this service uses the store: the signing
        key's read and the claim under way are done and the attempts under
        way settled (a claim starts every request it takes, so none is left
        claimed and unstarted)."""
        super().stopService()
        self._stopping = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        for call in (self._wake_call, self._key_call):
            if call is not None and call.active():
                call.cancel()
        for pending in (self._reading, self._claiming):
            if pending is not None:
                yield _quietly(pending)
        while self._in_flight:
            yield defer.DeferredList(list(self._in_flight.values()))

    # -- polling ---------------------------------------------------------------------------

    def wake(self):
        """Look at the outbox soon."""
        if not self.running or self._stopping or not self._loops:
            return
        if self._wake_call is None or not self._wake_call.active():
            self._wake_call = self.clock.callLater(0, self._poll_once)

    def _poll_once(self):
        d = self.claim()
        d.addErrback(lambda f: log.failure("webhooks: claiming due requests failed", f))
        d.addCallback(lambda _: self._refresh_depth())
        return d.addCallback(lambda _: None)

    def claim(self):
        """Claim due requests for the free slots and start sending them.

        @return: Deferred firing with the Deferreds of the attempts started.
        """
        free = self.config.concurrency - len(self._in_flight)
        if self._claiming is not None or free <= 0 or self._stopping:
            return defer.succeed([])
        d = self._claiming = self.store.claim_webhook_requests(
            self.node_id, self.clock.seconds(), self.config.lease, free)

        def start(requests):
            return [self._start(request) for request in requests]

        def done(result):
            self._claiming = None
            return result
        return d.addCallback(start).addBoth(done)

    @defer.inlineCallbacks
    def run_once(self):
        """Claim what is due now and send it; fires when all is settled
        (for tests and tools)."""
        if self._claiming is not None:
            yield _quietly(self._claiming)
        yield self.claim()
        while self._in_flight:
            yield defer.DeferredList(list(self._in_flight.values()))

    def _start(self, request):
        d = self._attempt(request)
        self._in_flight[request.id] = d

        def finished(result):
            self._in_flight.pop(request.id, None)
            self.wake()  # a slot is free: more may be due
            return result
        d.addErrback(lambda f: log.failure("webhooks: request {uuid} failed unexpectedly", f,
                                           uuid=request.uuid))
        return d.addBoth(finished)

    @defer.inlineCallbacks
    def _attempt(self, request):
        outcome = yield self.sender.send(request.url, request.body)
        now = self.clock.seconds()
        attempts = request.attempts + 1
        when = None
        if outcome.delivered:
            result = "delivered"
        elif outcome.refused:
            result = "refused"
        else:
            when = next_attempt(now, attempts, self.config.retry_delays)
            result = "retry" if when is not None else "failed"
        attempt = WebhookAttempt(request.id, now, outcome.status_code, outcome.error,
                                 when is not None, self.node_id)
        held = yield self.store.settle_webhook_request(request.id, self.node_id, attempt, when)
        self._log(request, attempts, result, outcome, when)
        if not held:
            log.warn("webhooks: {event} {uuid}: this node no longer held the request (lease "
                     "lost or webhook removed); the attempt was not recorded",
                     event=request.event, uuid=request.uuid)
        if self.metrics is not None:
            self.metrics.webhooks.labels(result).inc()
        return result

    def _log(self, request, attempts, result, outcome, when):
        url = shown_url(request.url)
        what = f"HTTP {outcome.status_code}" if outcome.status_code is not None else \
            outcome.error
        if result == "delivered":
            log.info("webhooks: {event} {uuid} to {url}: delivered ({what}, attempt {n})",
                     event=request.event, uuid=request.uuid, url=url, what=what,
                     n=attempts)
        elif result == "retry":
            log.warn("webhooks: {event} {uuid} to {url}: attempt {n} failed ({what}); "
                     "retrying in {delay:.0f} s", event=request.event, uuid=request.uuid,
                     url=url, n=attempts, what=outcome.error or what,
                     delay=when - self.clock.seconds())
        else:
            log.warn("webhooks: {event} {uuid} to {url}: {result} after attempt {n} ({what})",
                     event=request.event, uuid=request.uuid, url=url,
                     result="refused" if result == "refused" else "failed, no retry left",
                     n=attempts, what=outcome.error or what)

    def _renew_leases(self):
        if not self._in_flight:
            return None
        d = self.store.renew_webhook_leases(self.node_id, sorted(self._in_flight),
                                            self.clock.seconds() + self.config.lease)
        return d.addErrback(lambda f: log.failure("webhooks: renewing leases failed", f))

    def _prune(self):
        before = self.clock.seconds() - self.config.retention_days * 86400
        d = self.store.prune_webhook_requests(before)
        return d.addErrback(lambda f: log.failure("webhooks: pruning old requests failed", f))

    def _refresh_depth(self):
        if self.metrics is None:
            return None
        d = self.store.webhook_outbox_counts()

        def refresh(counts):
            for status in ("pending", "delivered", "failed"):
                self.metrics.webhook_outbox.labels(status).set(counts.get(status, 0))
        return d.addCallbacks(refresh, lambda f: None)


def _quietly(d):
    """A Deferred firing with C{None} when C{d} fires, leaving C{d}'s result
    to its other callbacks."""
    observer = defer.Deferred()

    def fire(result):
        observer.callback(None)
        return result
    d.addBoth(fire)
    return observer
