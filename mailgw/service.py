"""Wiring: one C{MultiService} holding the store, the TLS options, every
listener and the metrics listener.

Every listener is a child from construction, so it binds in
C{privilegedStartService}, before twistd drops privileges (ports below 1024
with C{twistd -u}); the certificate, the key and the package's schema files
are read then too. The store opens in C{startService}: until it answers,
SMTP sessions get C{421 ... Service not available}, the API a
C{TemporaryFailure} and C{/health} 503; then the relay and the lock-out
poller start. A start that fails says why in one line and exits non-zero.
The stop is graceful: stop accepting, let transactions in flight finish
within the grace period, 421 to idle sessions, then close the store."""
from __future__ import annotations

import atexit
import functools
import os
import signal
import sys

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mailgw.auth.guard import AuthenticationGuard
from mailgw.auth.realm import build_portal
from mailgw.auth.throttle import FailureThrottle, SharedLockouts
from mailgw.config import Config, ConfigError
from mailgw.domains.lookup import monitor_lookup
from mailgw.domains.monitor import DNSMonitor
from mailgw.listeners import AdoptedListenerService, ListenerService, parse_endpoint
from mailgw.metrics import Metrics, TimedStore
from mailgw.smtp.delivery import SubmissionDelivery
from mailgw.smtp.factory import ProtocolSettings, SubmissionFactory
from mailgw.smtp.proxy_listener import ProxyProtocolFactory
from mailgw.smtp.tlslayer import DirectTLSFactory
from mailgw.relay.destinations import node_addresses
from mailgw.relay.service import RelayService
from mailgw.store import open_store
from mailgw.store.base import schema_files
from mailgw.store.cache import CachingDirectory
from mailgw.store.files import private_directory
from mailgw.submission import CoreSettings, SubmissionCore
from mailgw.tls import TLSOptions
from mailgw.web.api import api_listener_service, build_api_site
from mailgw.web.health import health_site
from mailgw.webhooks.events import domain_checked
from mailgw.webhooks.sender import tls_policy
from mailgw.webhooks.service import WebhookService
from mailgw.workers.pool import WorkerPool

log = Logger()


def protocol_settings(config: Config, listener) -> ProtocolSettings:
    return ProtocolSettings(
        hostname=config.hostname,
        max_message_size=config.limits.max_message_size,
        max_recipients=config.limits.max_recipients,
        auth_requires_tls=listener.requires_tls_for_auth,
        idle_timeout=listener.idle_timeout,
        data_timeout=listener.data_timeout,
        min_data_rate=listener.min_data_rate,
        max_session_time=listener.max_session_time,
        tls_handshake_timeout=listener.tls_handshake_timeout,
        max_connections=listener.max_connections,
        max_connections_per_ip=listener.max_connections_per_ip,
        allow_address_literals=config.limits.allow_address_literals,
    )


class AfterStore(service.MultiService):
    """Services that need the store: started only once it is open."""

    def __init__(self, ready: defer.Deferred):
        super().__init__()
        self._ready = ready
        self._started = False

    def startService(self):
        service.Service.startService(self)
        self._ready.addCallback(self._start)

    def _start(self, result):
        if self.running and not self._started:
            self._started = True
            service.MultiService.startService(self)
        return result

    def stopService(self):
        if not self._started:
            return service.Service.stopService(self)
        self._started = False
        return service.MultiService.stopService(self)


def exit_status_at_end(code: int) -> None:
    """Make the process exit with C{code} once twistd has shut down (twistd
    ends with status 0 after a reactor stop it did not get from a signal)."""
    def leave():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    atexit.register(leave)


class GatewayService(service.MultiService):
    """The whole gateway: listeners bound while privileged, the store opened
    next, and what needs the store started once it is open.

    In a worker process (C{worker} given) it is the SMTP part only: the
    listeners it inherited, its own store connection, the throttles and
    their shared lock-outs; twistd's process serves everything else.
    """

    def __init__(self, config: Config, reactor, worker=None):
        """
        @param worker: in a worker process, what L{mailgw.workers.child}
            knows: C{number}, C{sockets} (a C{(descriptor, address family)}
            per C{[[listeners]]} table, in order), C{enqueued} (called
            after each committed enqueue, for the relay in twistd's process)
            and C{tls_pem} (the certificate and key twistd's process serves).
        """
        super().__init__()
        #: fires once the store is open and its schema current
        self.ready = defer.Deferred()
        self.config = config
        self.reactor = reactor
        self.metrics = Metrics()
        self.raw_store = open_store(config.database.url, reactor, config.database.pool_size,
                                    store_timeout=config.database.store_timeout)
        schema_files(self.raw_store.engine)  # package data, read while still privileged
        self.store = TimedStore(self.raw_store, self.metrics)
        #: what sessions read on the message path: reused for up to a second
        self.directory = CachingDirectory(self.store, reactor)
        self.tls = TLSOptions.from_config(
            config.tls, self.metrics,
            # a worker serves the pair twistd's process read, maybe as root
            contents=None if worker is None else worker.tls_pem) if config.tls else None
        #: the end of every submission, SMTP and HTTP alike
        self.core = SubmissionCore(self.directory, reactor, CoreSettings(
            config.hostname, config.limits.max_message_size, config.limits.max_header_size,
            config.spool_directory))

        def make_delivery(identity, session):
            return SubmissionDelivery(identity, session, self.core, self.directory)

        #: the failure throttles of every listener and the HTTP API (failed
        #: keys; attempts without one), their lock-outs on the store's notice
        #: board for `mailgw throttle` (docs/operations.md)
        throttles = {
            "key": FailureThrottle.from_config(reactor, config.auth_throttle),
            "anonymous": FailureThrottle.anonymous_from_config(reactor, config.auth_throttle)}
        self.guard = AuthenticationGuard(throttles["key"], throttles["anonymous"])
        self.lockouts = SharedLockouts(self.store, reactor, throttles)
        self.portal = build_portal(self.directory, reactor, make_delivery, self.guard)
        #: what must not serve before the store is open (their C{ready} flags)
        self.gates = []
        self.factories = []
        #: in a worker process: its number and the sockets it inherited
        self.worker = worker
        self.listeners = [self._listener(i, listener)
                          for i, listener in enumerate(config.listeners)]
        self.api = self.web = None
        self.dns_monitor = self.relay = self.webhooks = None
        #: the worker processes, started once the store is open (twistd's
        #: process only, with [server] workers > 1; docs/deployment.md)
        self.workers = None
        if worker is None:
            self._http_listeners()
        for gate in self.gates:
            gate.ready = False
        for listener in self.listeners:
            listener.setServiceParent(self)
        self.after_store = AfterStore(self.ready)
        self.after_store.setServiceParent(self)
        self.lockouts.setServiceParent(self.after_store)  # polls the operator's clears
        if worker is None:
            self._background_services()
            if config.server.workers > 1:
                self.workers = WorkerPool(config, reactor, self.listeners[:len(config.listeners)],
                                          enqueued=self._enqueued_in_worker,
                                          notify_enqueued=self.relay is not None,
                                          tls=self.tls)
        else:
            # the relay runs in twistd's process: tell it there is mail
            self.directory.after_enqueue = worker.enqueued

    def _http_listeners(self):
        """The HTTP API, the web interface and the metrics listener: served
        by twistd's process only, never by workers."""
        config, reactor = self.config, self.reactor
        if config.http_api is not None:
            site = build_api_site(self.portal, self.core, config, reactor, self.metrics,
                                  store=self.store)
            self.gates.append(site.resource)
            self.api = api_listener_service(site, config, self.tls, reactor, self.metrics)
            self.listeners.append(self.api)
        if config.web is not None:
            self.web = self._web_listener()
            self.listeners.append(self.web)
        if config.metrics.endpoint:
            site = health_site(self.store, self.metrics)
            self.gates += site.gates
            self.listeners.append(ListenerService(
                parse_endpoint(reactor, config.metrics.endpoint, "metrics.endpoint"), site,
                config.metrics.endpoint, "metrics.endpoint",
                "listening on {endpoint} at {host} port {port} (metrics and health)"))

    def _background_services(self):
        """The relay, the webhook sender and the DNS monitor, once the store
        is open: in twistd's process only. They claim their work with
        leases and could run in every process, but one process keeps
        C{[relay] concurrency} and the idle polls of the store what the
        config says (docs/deployment.md)."""
        config, reactor = self.config, self.reactor
        #: checks every domain's DNS records now and then (docs/dkim.md)
        if config.dns.check_interval > 0:
            self.dns_monitor = DNSMonitor(
                self.store, functools.partial(monitor_lookup, config, reactor), config.dns,
                reactor, self.metrics)
            # DomainDNSError webhooks (docs/webhooks.md), recorded whether or
            # not this node sends webhooks
            self.dns_monitor.after_check = functools.partial(domain_checked, self.store)
            self.dns_monitor.setServiceParent(self.after_store)
        if config.relay.enabled:
            self.relay = RelayService(self.store, config.relay, reactor,
                                      hostname=config.hostname, metrics=self.metrics,
                                      stop_grace=config.shutdown_grace)
            self.directory.after_enqueue = self.relay.wake
            self.relay.setServiceParent(self.after_store)
        if config.webhooks.enabled:
            # this node's own addresses are refused like loopback (looked up
            # once, here, as the relay does)
            own = frozenset() if config.webhooks.allow_private_addresses else \
                node_addresses()
            try:  # read now, while twistd may still be privileged
                policy = tls_policy(config.webhooks.ca_certificates)
            except ValueError as e:
                raise ConfigError(f"config error: webhooks.ca_certificates: {e}") from None
            self.webhooks = WebhookService(self.store, config.webhooks, reactor,
                                           hostname=config.hostname, metrics=self.metrics,
                                           own=own, policy=policy)
            self.webhooks.setServiceParent(self.after_store)

    def _enqueued_in_worker(self):
        if self.relay is not None:
            self.relay.wake()

    def _web_listener(self) -> ListenerService:
        """The web interface (docs/web.md) on the same store and guard as
        SMTP and the HTTP API, so its changes apply to both at once."""
        from mailgw.domains.lookup import domain_lookup
        from mailgw.web.ui.site import build_web_site, web_listener_service
        site = build_web_site(self.store, self.guard, self.config, self.reactor,
                              self.metrics, domain_lookup(self.config, self.reactor),
                              after_change=self.directory.forget,
                              bound_ports=self._smtp_ports)
        self.gates.append(site.resource)
        return web_listener_service(site, self.config, self.tls, self.reactor, self.metrics)

    def _smtp_ports(self) -> list:
        """The port each SMTP listener is bound to (None before it is)."""
        return [getattr(smtp.port.getHost(), "port", None) if smtp.port else None
                for smtp in self.listeners[:len(self.config.listeners)]]

    def _listener(self, index: int, listener) -> ListenerService:
        settings = protocol_settings(self.config, listener)
        starttls = self.tls if listener.tls == "starttls" else None
        factory = SubmissionFactory(settings, self.portal, self.reactor, starttls,
                                    self.guard, self.metrics)
        self.factories.append(factory)
        self.gates.append(factory)
        wrapped = factory
        if listener.tls == "implicit":
            wrapped = DirectTLSFactory(self.tls, False, wrapped)
        if listener.proxy_protocol:
            wrapped = ProxyProtocolFactory(wrapped, listener.trusted_proxies, self.reactor,
                                           listener.tls_handshake_timeout)
        where = f"listeners[{index}].endpoint"
        if self.worker is not None:
            fd, family = self.worker.sockets[index]
            return AdoptedListenerService(
                self.reactor, fd, family, wrapped, listener.endpoint,
                "accepting on {endpoint} at {host} port {port} (socket of the main process, "
                f"tls={listener.tls})")
        return ListenerService(
            parse_endpoint(self.reactor, listener.endpoint, where), wrapped,
            listener.endpoint, where,
            "listening on {endpoint} at {host} port {port} "
            f"(tls={listener.tls}, auth requires TLS: {listener.requires_tls_for_auth})",
            shared=self.config.server.workers > 1)

    def startService(self):
        super().startService()
        if self.tls is not None and self.config.tls.reload_interval > 0:
            self._reload = LoopingCall(self.tls.reload_if_changed)
            self._reload.clock = self.reactor
            self._reload.start(self.config.tls.reload_interval, now=False)
        self._install_sighup()
        try:
            # Made here, as the user twistd switched to, so that user owns it.
            private_directory(self.config.spool_directory, log)
        except OSError as e:
            return self._cannot_start(f"cannot use the spool directory "
                                      f"{self.config.spool_directory}: {e.strerror}")
        d = self.raw_store.start()
        d.addCallback(lambda _: self.raw_store.upgrade())
        d.addCallbacks(self._open, self._failed_to_start)

    def _open(self, applied):
        if applied:
            log.info("database schema upgraded to version {v}", v=applied[-1])
        for gate in self.gates:
            gate.ready = True
        log.info("store open: accepting mail")
        self.ready.callback(None)
        if self.workers is not None and self.running:
            self.workers.start()

    def _install_sighup(self):
        if self.tls is None:
            return
        try:
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(
                self._reload_everywhere))
        except ValueError:  # not the main thread (tests)
            pass

    def _reload_everywhere(self):
        """SIGHUP (C{systemctl reload}): the certificate here, and in every
        worker, which reloads its own."""
        self.tls.reload_if_changed()
        if self.workers is not None:
            self.workers.signal_all("HUP")

    def _failed_to_start(self, failure):
        self._cannot_start(f"cannot open the store {_without_password(self.config.database.url)}"
                           f": {failure.getErrorMessage()}")

    def _cannot_start(self, why: str):
        # One line, then a non-zero exit (systemd's Restart=on-failure retries).
        log.critical("mailgw: {why}", why=why)
        exit_status_at_end(1)
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    @defer.inlineCallbacks
    def stopService(self):
        """Stop accepting; drain sessions within the grace period; close.

        Workers are told first, so that they drain theirs meanwhile; the
        shared sockets close once every worker has ended."""
        reload = getattr(self, "_reload", None)
        if reload is not None and reload.running:
            reload.stop()
        workers_ended = self.workers.stop() if self.workers is not None else None
        yield super().stopService()  # the listeners stop accepting
        yield self._drain_sessions(self.config.shutdown_grace)
        if workers_ended is not None:
            yield workers_ended
            for listener in self.listeners[:len(self.config.listeners)]:
                yield listener.close()
        yield self.raw_store.close()
        log.info("mailgw stopped")

    def _drain_sessions(self, grace: float):
        sessions = [s for f in self.factories for s in list(f.sessions)]
        if not sessions:
            return defer.succeed(None)
        log.info("shutting down: {n} open sessions get up to {grace} s", n=len(sessions),
                 grace=grace)
        for session in sessions:
            session.shutdown()
        done = defer.DeferredList([s.closed for s in sessions])
        timer = self.reactor.callLater(grace, self._force_close, sessions)

        def finished(result):
            if timer.active():
                timer.cancel()
            return result
        return done.addBoth(finished)

    @staticmethod
    def _force_close(sessions):
        for session in sessions:
            if not session.closed.called:
                log.warn("[{trace}] closed at the end of the shutdown grace period",
                         trace=session.session.trace_id)
                session.transport.abortConnection()


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def build_service(config: Config, reactor) -> GatewayService:
    """The gateway for C{config} (in twistd's process).

    @raise mailgw.listeners.StartupError: a listener's endpoint does not parse.
    @raise mailgw.tls.TLSConfigError: the TLS files or settings cannot be used.
    @raise ConfigError: C{[webhooks] ca_certificates} cannot be used.
    """
    return GatewayService(config, reactor)
