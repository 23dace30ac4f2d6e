"""Health and metrics over twisted.web: ``/health`` answers 200 when the
store answers (503 otherwise) and ``/metrics`` is the Prometheus text format,
with the queue depth read from the store at scrape time."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.logger import Logger
from twisted.web import resource, server

log = Logger()


class HealthResource(resource.Resource):
    isLeaf = True

    def __init__(self, store):
        super().__init__()
        self._store = store

    def render_GET(self, request):
        d = self._store.ping()

        def answer(ok):
            request.setResponseCode(200 if ok else 503)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(b"ok\n" if ok else b"store unavailable\n")
            request.finish()
        d.addCallbacks(lambda _: answer(True), lambda f: answer(False))
        return server.NOT_DONE_YET


class MetricsResource(resource.Resource):
    isLeaf = True

    def __init__(self, store, metrics):
        super().__init__()
        self._store = store
        self._metrics = metrics

    def render_GET(self, request):
        d = self._store.queue_counts()

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
    root = resource.Resource()
    root.putChild(b"health", HealthResource(store))
    root.putChild(b"metrics", MetricsResource(store, metrics))
    site = server.Site(root)
    site.noisy = False
    return site
