"""Wiring: one C{MultiService} holding the store, the TLS options, every
listener and the metrics listener, started in order (the store and its schema
first, then the listeners) and stopped gracefully (stop accepting, let
transactions in flight finish within the grace period, 421 to idle sessions,
then close the store)."""
from __future__ import annotations

import signal

from twisted.application import internet, service
from twisted.internet import defer, endpoints
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from mailgw.auth.guard import AuthenticationGuard
from mailgw.auth.realm import build_portal
from mailgw.auth.throttle import FailureThrottle, SharedLockouts
from mailgw.config import Config
from mailgw.metrics import Metrics, TimedStore
from mailgw.smtp.delivery import SubmissionDelivery
from mailgw.smtp.factory import ProtocolSettings, SubmissionFactory
from mailgw.smtp.proxy_listener import ProxyProtocolFactory
from mailgw.relay.service import RelayService
from mailgw.store import open_store
from mailgw.store.cache import CachingDirectory
from mailgw.store.files import private_directory
from mailgw.submission import CoreSettings, SubmissionCore
from mailgw.tls import TLSOptions
from mailgw.web.api import api_listener_service, build_api_site
from mailgw.web.health import health_site

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


def _endpoint_service(reactor, description, factory, label):
    svc = internet.StreamServerEndpointService(
        endpoints.serverFromString(reactor, description), factory)
    svc._raiseSynchronously = True
    svc.label = label
    return svc


class GatewayService(service.MultiService):
    """The store first; the listeners only once it answers."""

    def __init__(self, config: Config, reactor):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.metrics = Metrics()
        self.raw_store = open_store(config.database.url, reactor, config.database.pool_size,
                                    store_timeout=config.database.store_timeout)
        self.store = TimedStore(self.raw_store, self.metrics)
        #: what sessions read on the message path: reused for up to a second
        self.directory = CachingDirectory(self.store, reactor)
        self.tls = TLSOptions.from_config(config.tls) if config.tls else None
        private_directory(config.spool_directory, log)
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
        self.api = None
        if config.http_api is not None:
            self.api = api_listener_service(
                build_api_site(self.portal, self.core, config, reactor,
                               self.metrics),
                config, self.tls, reactor, self.metrics)
        self.factories = []
        self.listeners = [self._listener(listener) for listener in config.listeners]
        if config.metrics.endpoint:
            self.listeners.append(_endpoint_service(
                reactor, config.metrics.endpoint, health_site(self.store, self.metrics),
                f"{config.metrics.endpoint} (metrics and health)"))
        self.relay = None
        if config.relay.enabled:
            self.relay = RelayService(self.store, config.relay, reactor,
                                      hostname=config.hostname, metrics=self.metrics,
                                      stop_grace=config.shutdown_grace)
            self.directory.after_enqueue = self.relay.wake

    def _listener(self, listener):
        settings = protocol_settings(self.config, listener)
        starttls = self.tls if listener.tls == "starttls" else None
        factory = SubmissionFactory(settings, self.portal, self.reactor, starttls,
                                    self.guard, self.metrics)
        self.factories.append(factory)
        wrapped = factory
        if listener.tls == "implicit":
            wrapped = TLSMemoryBIOFactory(self.tls, False, wrapped)
        if listener.proxy_protocol:
            wrapped = ProxyProtocolFactory(wrapped, listener.trusted_proxies, self.reactor,
                                           listener.tls_handshake_timeout)
        return _endpoint_service(
            self.reactor, listener.endpoint, wrapped,
            f"{listener.endpoint} (tls={listener.tls}, auth requires TLS: "
            f"{listener.requires_tls_for_auth})")

    def startService(self):
        super().startService()
        d = self.raw_store.start()
        d.addCallback(lambda _: self.raw_store.upgrade())
        d.addCallback(self._serve)
        d.addErrback(self._failed_to_start)

    def _serve(self, applied):
        if applied:
            log.info("database schema upgraded to version {v}", v=applied[-1])
        for svc in self.listeners:
            svc.setServiceParent(self)
            svc._waitingForPort.addCallback(self._listening, svc.label)
        if self.api is not None:
            self.api.setServiceParent(self)
        if self.relay is not None:
            self.relay.setServiceParent(self)
        self.lockouts.setServiceParent(self)  # polls the operator's clears
        if self.tls is not None and self.config.tls.reload_interval > 0:
            self._reload = LoopingCall(self.tls.reload_if_changed)
            self._reload.clock = self.reactor
            self._reload.start(self.config.tls.reload_interval, now=False)
        self._install_sighup()
        return True

    @staticmethod
    def _listening(port, label):
        address = port.getHost()
        endpoint, _, detail = label.partition(" ")
        # tests and operators read the bound port from this line
        log.info("listening on {endpoint} at {host} port {port} {detail}",
                 endpoint=endpoint, host=address.host, port=address.port, detail=detail)
        return port

    def _install_sighup(self):
        if self.tls is None:
            return
        try:
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(
                self.tls.reload_if_changed))
        except ValueError:  # not the main thread (tests)
            pass

    def _failed_to_start(self, failure):
        log.failure("mailgw could not start", failure)
        if self.reactor.running:
            self.reactor.stop()
        return False

    @defer.inlineCallbacks
    def stopService(self):
        """Stop accepting; drain sessions within the grace period; close."""
        reload = getattr(self, "_reload", None)
        if reload is not None and reload.running:
            reload.stop()
        yield super().stopService()  # the listeners stop accepting
        yield self._drain_sessions(self.config.shutdown_grace)
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


def build_service(config: Config, reactor) -> GatewayService:
    return GatewayService(config, reactor)
