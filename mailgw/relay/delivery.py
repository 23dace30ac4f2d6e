"""One delivery job: the claimed entries of one route (the smarthost, or one
recipient domain) carried over one connection, and each entry's outcome
written back to the store.

The L{Router} knows where a route goes and how to talk to it (endpoint,
TLS, AUTH); a L{DeliveryJob} resolves the route, connects to its first
target that answers, sends one transaction per message (all its recipients
of that route at once, RSET between messages; the body from the L{Signer},
DKIM-signed when the message's domain has a key), reconnects when a connection
that already carried a message drops, and hands every result to the
L{Settler}, which decides sent, retry or failed (with its bounce).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

from twisted.internet import defer, endpoints, ssl
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailgw.address import normalise_domain
from mailgw.config import RelayConfig
from mailgw.model import Claim, DeliveryAttempt
from mailgw.relay.bounce import build_bounce
from mailgw.relay.client import ClientSettings, SMTPSession, connect, describe
from mailgw.relay.errors import DeliveryError, permanent, temporary
from mailgw.relay.mx import MXResolver, Target
from mailgw.relay.schedule import next_attempt
from mailgw.relay.signing import Signer, SigningFailure

log = Logger()

#: the route of every entry when a smarthost is configured
SMARTHOST = "smarthost"


@dataclass(frozen=True)
class Result:
    """What became of one entry in one attempt."""
    code: int | None
    text: str
    host: str | None
    permanent: bool = False

    @property
    def sent(self) -> bool:
        return self.code is not None and 200 <= self.code < 300

    @classmethod
    def of_error(cls, e: DeliveryError) -> Result:
        return cls(e.code, e.text, e.host, e.permanent)


def route_of(entry, smarthost: bool) -> str:
    """The route key of an entry: L{SMARTHOST}, or its recipient's domain."""
    if smarthost:
        return SMARTHOST
    domain = entry.rcpt_to.rpartition("@")[2]
    return normalise_domain(domain) or domain.lower()


class Router:
    """Where a route goes and the settings to talk to each target."""

    def __init__(self, config: RelayConfig, reactor, helo_name: str, mx: MXResolver | None,
                 smarthost_tls=None):
        self.config = config
        self.reactor = reactor
        self.helo_name = helo_name
        self.mx = mx
        self.smarthost_tls = smarthost_tls or self._default_smarthost_tls

    @property
    def uses_smarthost(self) -> bool:
        return bool(self.config.smarthost)

    def _default_smarthost_tls(self, host: str):
        if self.config.verify:
            return ssl.optionsForClientTLS(host)
        return ssl.CertificateOptions()

    def targets(self, route: str):
        """@return: Deferred firing with the L{Target}s to try, in order."""
        if route == SMARTHOST:
            host, _, port = self.config.smarthost.rpartition(":")
            host = host.strip("[]")
            return defer.succeed([Target(host, host, int(port))])
        if not route:
            return defer.fail(permanent("the recipient address has no domain"))
        return self.mx.targets(route)

    def endpoint(self, target: Target):
        timeout = self.config.connect_timeout
        if self.uses_smarthost:
            endpoint = endpoints.HostnameEndpoint(self.reactor, target.host, target.port,
                                                  timeout=timeout)
            if self.config.tls == "implicit":
                endpoint = endpoints.wrapClientTLS(self.smarthost_tls(target.host), endpoint)
            return endpoint
        kind = endpoints.TCP6ClientEndpoint if ":" in target.address else \
            endpoints.TCP4ClientEndpoint
        return kind(self.reactor, target.address, target.port, timeout=timeout)

    def settings(self, target: Target) -> ClientSettings:
        timeout = self.config.command_timeout
        if self.uses_smarthost:
            return ClientSettings(
                helo_name=self.helo_name, tls=self.config.tls,
                tls_options=self.smarthost_tls(target.host), username=self.config.username,
                password=self.config.password, timeout=timeout)
        # MX hosts: STARTTLS when offered, certificates not verified (RFC 7435)
        return ClientSettings(helo_name=self.helo_name, tls="opportunistic",
                              tls_options=ssl.CertificateOptions(), timeout=timeout)


class Settler:
    """Writes one result back: sent, retry later, or failed with a bounce."""

    def __init__(self, store, config: RelayConfig, node_id: str, clock, hostname: str,
                 rand, metrics=None):
        self.store, self.config, self.node_id = store, config, node_id
        self.clock, self.hostname, self.rand, self.metrics = clock, hostname, rand, metrics

    @defer.inlineCallbacks
    def settle(self, claim: Claim, result: Result):
        entry, now = claim.entry, self.clock.seconds()
        attempt = DeliveryAttempt(entry.id, now, result.host, result.code, result.text,
                                  self.node_id)
        if result.sent:
            outcome, held = "sent", (yield self.store.mark_sent(entry.id, self.node_id, attempt))
        else:
            when = None if result.permanent else next_attempt(
                now, entry.attempts + 1, claim.age_from, base=self.config.retry_base,
                maximum=self.config.retry_max, max_age=self.config.max_queue_age,
                rand=self.rand.random())
            if when is not None:
                outcome = "retry"
                held = yield self.store.mark_retry(entry.id, self.node_id, attempt, when)
            else:
                outcome = "failed"
                bounce = yield self._bounce(claim, result, expired=not result.permanent)
                held = yield self.store.mark_failed(entry.id, self.node_id, attempt, bounce)
        log.info("relay: {token} to <{rcpt}>: {outcome} ({host}: {text})", token=entry.token,
                 rcpt=entry.rcpt_to, outcome=outcome, host=result.host or "-",
                 text=result.text)
        if not held:
            log.warn("relay: {token} to <{rcpt}>: this node no longer held the entry (lease "
                     "lost or entry changed); its outcome was recorded only as an attempt",
                     token=entry.token, rcpt=entry.rcpt_to)
        if self.metrics is not None:
            self.metrics.relay.labels(outcome).inc()
        return outcome

    @defer.inlineCallbacks
    def hold(self, claim: Claim, reason: str):
        """Set the entry C{held} with C{reason}, an attempt recording why:
        it waits for the operator (C{mailgw message release})."""
        entry, now = claim.entry, self.clock.seconds()
        attempt = DeliveryAttempt(entry.id, now, None, None, f"held: {reason}", self.node_id)
        held = yield self.store.mark_held(entry.id, self.node_id, attempt, reason)
        log.error("relay: {token} to <{rcpt}>: held ({reason})", token=entry.token,
                  rcpt=entry.rcpt_to, reason=reason)
        if not held:
            log.warn("relay: {token} to <{rcpt}>: this node no longer held the entry (lease "
                     "lost or entry changed); the hold was recorded only as an attempt",
                     token=entry.token, rcpt=entry.rcpt_to)
        if self.metrics is not None:
            self.metrics.relay.labels("held").inc()
        return "held"

    @defer.inlineCallbacks
    def _bounce(self, claim: Claim, result: Result, expired: bool):
        entry = claim.entry
        if not entry.mail_from:
            return None  # never bounce a bounce
        head = yield self.store.read_body_chunk(entry.message_id, 0)
        return build_bounce(entry, hostname=self.hostname, now=self.clock.seconds(),
                            code=result.code, text=result.text, remote_host=result.host,
                            expired=expired, original_head=head or b"")


class DeliveryJob:
    """The claims of one route, over as few connections as possible."""

    def __init__(self, router: Router, settler: Settler, store, clock, route: str, claims,
                 signer: Signer | None = None):
        self.router, self.settler, self.store, self.clock = router, settler, store, clock
        #: makes each message's body: DKIM-signed when its domain has a key
        self.signer = signer or Signer(store, router.reactor)
        self.route = route
        self.claims = list(claims)
        self.session = None
        self.opened = []  # every session of the job, closed before run() fires
        self.aborted = False
        self._step = None  # the look-up or connection attempt under way

    def abort(self):
        """Stop now: cancel the look-up or connection attempt under way, drop
        the connections and settle nothing more (a settle under way still
        ends; the unsettled entries are given back by the runner)."""
        self.aborted = True
        step, self._step = self._step, None
        if step is not None:
            d, waiting = step
            d.cancel()
            if not waiting.called:  # whatever d does when cancelled, stop waiting
                waiting.errback(temporary("delivery stopped"))
        for session in self.opened:
            session.connection.abort()

    def _unless_aborted(self, d):
        """C{d}'s result, unless L{abort} comes first: C{d} is then cancelled
        and this fails at once with a L{DeliveryError}; whatever C{d} still
        brings is dropped (a session closed at once)."""
        waiting = defer.Deferred()
        step = (d, waiting)

        def arrived(result):
            if self._step is step:
                self._step = None
            if not waiting.called:
                if isinstance(result, Failure):
                    waiting.errback(result)
                else:
                    waiting.callback(result)
            elif isinstance(result, SMTPSession):
                result.connection.abort()
            return None  # a failure after the abort is of no interest
        self._step = step
        d.addBoth(arrived)
        if self.aborted:
            self.abort()
        return waiting

    def _messages(self) -> OrderedDict:
        by_message = OrderedDict()
        for claim in self.claims:
            by_message.setdefault(claim.entry.message_id, []).append(claim)
        return by_message

    @defer.inlineCallbacks
    def run(self):
        """Deliver every claim (or settle it as failed); fires once the
        job's connections are closed."""
        try:
            yield self._run()
        except Exception:
            for session in self.opened:  # e.g. the store failed mid-job
                session.connection.abort()
            raise
        finally:
            yield defer.DeferredList([s.connection.when_closed() for s in self.opened])

    @defer.inlineCallbacks
    def _run(self):
        pending = self._messages()
        try:
            targets = yield self._unless_aborted(self.router.targets(self.route))
        except Exception as e:
            yield self._settle_all(pending, Result.of_error(describe(e)))
            return
        while pending and not self.aborted:
            session = yield self._open(targets)
            if isinstance(session, DeliveryError):
                yield self._settle_all(pending, Result.of_error(session))
                return
            carried = yield self._carry(session, pending)
            if not carried:  # the first message broke this connection
                return
        if self.session is not None and not self.aborted:
            self.session.quit()

    @defer.inlineCallbacks
    def _open(self, targets):
        """A session with the first target that answers, or the last error.

        Opportunistic TLS that fails its handshake is tried once more in
        plain text, as MTAs do (RFC 7435): an MX host with a broken TLS
        set-up must not keep its mail waiting for days."""
        last = None
        for target in targets:
            settings = self.router.settings(target)
            while not self.aborted:
                try:
                    session = yield self._unless_aborted(connect(
                        self.router.endpoint(target), self.clock, settings, target.label))
                    self.opened.append(session)
                    self.session = session
                    return session
                except DeliveryError as e:
                    last = e
                    if settings.tls != "opportunistic" or not e.text.startswith("TLS failed"):
                        break
                    settings = replace(settings, tls="none")
        return last or describe(Exception("stopped"))

    @defer.inlineCallbacks
    def _carry(self, session, pending) -> bool:
        """Send pending messages over C{session} until done or it breaks.

        @return: whether it carried one message at least (worth reconnecting).
        """
        carried = False
        while pending:
            message_id, group = next(iter(pending.items()))
            entry = group[0].entry
            try:
                body, size = yield self.signer.body_for(entry)
                replies = yield session.send(
                    entry.mail_from, [c.entry.rcpt_to for c in group], body, size)
            except SigningFailure as e:
                # raised before anything was sent for it: the session is as
                # good as it was, and goes on (or quits) as after a delivery
                del pending[message_id]
                for claim in group:
                    yield self.settler.hold(claim, e.reason)
                carried = True
                continue
            except Exception as e:
                session.connection.abort()
                self.session = None
                if self.aborted:
                    return False
                del pending[message_id]
                yield self._settle_group(group, Result.of_error(describe(e, session.host)))
                if not carried:
                    yield self._settle_all(pending, Result.of_error(describe(e, session.host)))
                return carried
            del pending[message_id]
            carried = True
            for claim in group:
                reply = replies[claim.entry.rcpt_to]
                yield self.settler.settle(claim, Result(reply.code, reply.text, session.host,
                                                        reply.permanent))
        return carried

    @defer.inlineCallbacks
    def _settle_group(self, group, result: Result):
        for claim in group:
            yield self.settler.settle(claim, result)

    @defer.inlineCallbacks
    def _settle_all(self, pending, result: Result):
        while pending and not self.aborted:
            _, group = pending.popitem(last=False)
            yield self._settle_group(group, result)
