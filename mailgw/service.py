"""Wiring: one C{MultiService} holding the store, the TLS options and every
listener, started in order (the store and its schema first, then the
listeners) and stopped in reverse."""
from __future__ import annotations

import os
import signal

from twisted.application import internet, service
from twisted.internet import defer, endpoints
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from mailgw.auth.realm import build_portal
from mailgw.auth.throttle import FailureThrottle
from mailgw.config import Config
from mailgw.smtp.delivery import DeliverySettings, SubmissionDelivery
from mailgw.smtp.factory import ProtocolSettings, SubmissionFactory
from mailgw.smtp.proxy_listener import ProxyProtocolFactory
from mailgw.store import open_store
from mailgw.tls import TLSOptions

log = Logger()


def protocol_settings(config: Config, listener) -> ProtocolSettings:
    return ProtocolSettings(
        hostname=config.hostname,
        max_message_size=config.limits.max_message_size,
        max_recipients=config.limits.max_recipients,
        auth_requires_tls=listener.requires_tls_for_auth,
        idle_timeout=listener.idle_timeout,
        data_timeout=listener.data_timeout,
        tls_handshake_timeout=listener.tls_handshake_timeout,
        max_connections=listener.max_connections,
        max_connections_per_ip=listener.max_connections_per_ip,
    )


class GatewayService(service.MultiService):
    """The store first; the listeners only once it answers."""

    def __init__(self, config: Config, reactor):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.store = open_store(config.database.url, reactor, config.database.pool_size)
        self.tls = TLSOptions.from_config(config.tls) if config.tls else None
        os.makedirs(config.spool_directory, exist_ok=True)
        delivery_settings = DeliverySettings(config.hostname,
                                             config.limits.max_message_size,
                                             config.spool_directory)

        def make_delivery(identity, session):
            return SubmissionDelivery(identity, session, self.store,
                                      delivery_settings, reactor)

        self.portal = build_portal(self.store, reactor, make_delivery)
        self.throttle = FailureThrottle.from_config(reactor, config.auth_throttle)
        self.listeners = []
        for listener in config.listeners:
            self.listeners.append(self._listener(listener))
        self.ready = defer.Deferred()

    def _listener(self, listener):
        settings = protocol_settings(self.config, listener)
        starttls = self.tls if listener.tls == "starttls" else None
        factory = SubmissionFactory(settings, self.portal, self.reactor, starttls,
                                    self.throttle)
        wrapped = factory
        if listener.tls == "implicit":
            wrapped = TLSMemoryBIOFactory(self.tls, False, wrapped)
        if listener.proxy_protocol:
            wrapped = ProxyProtocolFactory(wrapped, listener.trusted_proxies, self.reactor,
                                           listener.tls_handshake_timeout)
        endpoint = endpoints.serverFromString(self.reactor, listener.endpoint)
        svc = internet.StreamServerEndpointService(endpoint, wrapped)
        svc._raiseSynchronously = True
        svc.listener_config = listener
        svc.smtp_factory = factory
        return svc

    def startService(self):
        super().startService()
        d = self.store.start()
        d.addCallback(lambda _: self.store.upgrade())
        d.addCallback(self._serve)
        d.addErrback(self._failed_to_start)
        d.addBoth(self._fire_ready)

    def _fire_ready(self, result):
        if not self.ready.called:
            self.ready.callback(result)

    def _serve(self, applied):
        if applied:
            log.info("database schema upgraded to version {v}", v=applied[-1])
        for svc in self.listeners:
            svc.setServiceParent(self)
            svc._waitingForPort.addCallback(self._listening, svc.listener_config)
        if self.tls is not None and self.config.tls.reload_interval > 0:
            self._reload = LoopingCall(self.tls.reload_if_changed)
            self._reload.clock = self.reactor
            self._reload.start(self.config.tls.reload_interval, now=False)
        self._install_sighup()
        return True

    @staticmethod
    def _listening(port, cfg):
        address = port.getHost()
        log.info("listening on {endpoint} at {host} port {port} (tls={tls}, auth requires "
                 "TLS: {art})", endpoint=cfg.endpoint, host=address.host, port=address.port,
                 tls=cfg.tls, art=cfg.requires_tls_for_auth)
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
        reload = getattr(self, "_reload", None)
        if reload is not None and reload.running:
            reload.stop()
        yield super().stopService()
        yield self.store.close()


def build_service(config: Config, reactor) -> GatewayService:
    return GatewayService(config, reactor)
