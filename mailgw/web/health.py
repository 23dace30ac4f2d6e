"""Health and metrics over twisted.web: ``/health`` answers 200 when the
store answers (503 otherwise) and ``/metrics`` is the Prometheus text format,
with the queue depth read from the store at scrape time."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

log = Logger()


class HealthResource(resource.Resource):
    """C{/health}: 200 while the store answers, 503 otherwise (and until it is open)."""

    isLeaf = True
    #: False until the gateway's store is open
    ready = True

    def __init__(self, store):
        super().__init__()
        self._store = store

    def render_GET(self, request):
        d = self._store.ping() if self.ready else defer.fail(RuntimeError("not open yet"))

        def answer(ok):
            request.setResponseCode(200 if ok else 503)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(b"ok\n" if ok else b"store unavailable\n")
            request.finish()
        d.addCallbacks(lambda _: answer(True), lambda f: answer(False))
        return server.NOT_DONE_YET


class MetricsResource(resource.Resource):
    """C{/metrics}: the Prometheus text format, the queue depth read at scrape time."""

    isLeaf = True
    #: False until the gateway's store is open
    ready = True

    def __init__(self, store, metrics):
        super().__init__()
        self._store = store
        self._metrics = metrics

    def render_GET(self, request):
        d = self._store.queue_counts() if self.ready else defer.fail(RuntimeError("not open"))

        def refresh(counts):
            for status in ("queued", "held", "sent", "failed"):
                self._metrics.queue_entries.labels(status).set(counts.get(status, 0))

        def render(_):
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
            request.write(generate_latest(self._metrics.registry))
            request.finish()
        d.addCallbacks(refresh, lambda f: log.warn("queue depth not refreshed: {why}",
                                                   why=f.getErrorMessage()))
        d.addCallback(render)
        return server.NOT_DONE_YET


def health_site(store, metrics) -> server.Site:
    """The site of C{/health} and C{/metrics}; its C{gates} are the resources
    whose C{ready} flag the gateway raises once the store is open."""
    root = resource.Resource()
    health, scrape = HealthResource(store), MetricsResource(store, metrics)
    root.putChild(b"health", health)
    root.putChild(b"metrics", scrape)
    site = server.Site(root)
    site.noisy = False
    site.gates = (health, scrape)
    return site
