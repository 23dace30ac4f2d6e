"""What the gateway counts, for Prometheus: one L{Metrics} object per
gateway (its own registry, so tests and several gateways in one process do not
collide), handed to every part that counts something.

Label values are bounded: verbs outside the known set count as "other", so a
client cannot grow the series without limit.
"""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

KNOWN_VERBS = frozenset({
    "HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "STARTTLS", "AUTH",
    "VRFY", "EXPN", "HELP", "BDAT", "ETRN"})


class Metrics:
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
        self.queue_entries = Gauge("mailgw_queue_entries", "Queue entries by status",
                                   ["status"], registry=r)
        self.relay = Counter("mailgw_relay_deliveries", "Relay delivery attempts by outcome",
                             ["outcome"], registry=r)
        self.store_seconds = Histogram(
            "mailgw_store_seconds", "Store operation latency", ["operation"], registry=r,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))

    def command(self, verb: str) -> None:
        counter = self._verbs.get(verb)
        if counter is None:
            counter = self.commands.labels(verb if verb in KNOWN_VERBS else "other")
            if verb in KNOWN_VERBS:
                self._verbs[verb] = counter  # bound once: this runs per command
        counter.inc()


class TimedStore:
    """The store, with each operation's latency observed in the histogram."""

    def __init__(self, store, metrics: Metrics):
        self._store = store
        self._histogram = metrics.store_seconds

    def __getattr__(self, name):
        target = getattr(self._store, name)
        if name.startswith("_") or not callable(target):
            return target
        histogram = self._histogram.labels(name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            d = target(*args, **kwargs)

            def observe(result):
                histogram.observe(time.perf_counter() - start)
                return result
            return d.addBoth(observe)
        timed.__name__ = name
        setattr(self, name, timed)  # built once per operation
        return timed
