"""The queue runner: an C{IService} that claims due queue entries for this
node and delivers them, a bounded number of connections at a time.

Every C{poll_interval} (and at once after L{RelayService.wake}) it claims up
to L{BATCH} entries per free connection slot, groups them by route (the
smarthost, or the recipient's domain) into L{DeliveryJob}s of at most
L{BATCH} entries each, and runs those jobs under a semaphore of
C{concurrency}. While entries are in flight their leases are renewed, so a
long delivery is never taken over by another node; a node that dies leaves
leases that pass after C{lease} seconds, and another node takes the entries
over. Stopping lets jobs finish within C{stop_grace}, then drops their
connections and gives the unsettled entries back at once.
"""
from __future__ import annotations

import os
import random
import secrets
from collections import OrderedDict

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mailgw.config import RelayConfig
from mailgw.relay.delivery import DeliveryJob, Router, Settler, route_of
from mailgw.relay.mx import MXResolver, make_resolver

log = Logger()

#: the most entries one connection carries per job
BATCH = 20


def default_node_id(hostname: str) -> str:
    """A name for this process among the nodes sharing a database."""
    return f"{hostname}/{os.getpid()}/{secrets.token_hex(3)}"


class RelayService(service.Service):
    """Delivers the queue from this node (see the module docstring).

    @param reactor: connects (TCP, DNS); C{clock} (default: C{reactor}) times
        polls, leases, retries and SMTP timeouts.
    @param resolver: a twisted.names resolver for MX look-ups (default: from
        C{config.resolver}).
    @param smarthost_tls: C{hostname -> client TLS options} for the smarthost
        (default: verified with C{optionsForClientTLS} when C{config.verify}).
    """

    name = "relay"

    def __init__(self, store, config: RelayConfig, reactor, node_id: str | None = None,
                 hostname: str = "localhost", *, clock=None, resolver=None,
                 smarthost_tls=None, rand=None, metrics=None, stop_grace: float = 30.0):
        self.store = store
        self.config = config
        self.reactor = reactor
        self.clock = clock or reactor
        self.node_id = node_id or default_node_id(hostname)
        self.stop_grace = stop_grace
        mx = None
        if not config.smarthost:
            mx = MXResolver(resolver or make_resolver(config.resolver, reactor),
                            config.mx_port, rand,
                            allow_local=config.allow_local_destinations)
        self.router = Router(config, reactor, hostname, mx, smarthost_tls)
        self.settler = Settler(store, config, self.node_id, self.clock, hostname,
                               rand or random.Random(), metrics)
        self._semaphore = defer.DeferredSemaphore(config.concurrency)
        self._jobs = {}  # DeliveryJob -> its Deferred
        self._in_flight = set()  # entry ids claimed and not yet finished
        self._claiming = None
        self._renewing = None  # the lease renewal under way
        self._wake_call = None
        self._poll = self._renew = None
        self._stopping = self._aborting = False
        #: the Deferred of the latest lease renewal (tests wait for it)
        self.last_renewal = None

    # -- IService ----------------------------------------------------------------------

    def startService(self):
        super().startService()
        self._stopping = self._aborting = False
        self._poll = LoopingCall(self._poll_once)
        self._poll.clock = self.clock
        self._poll.start(self.config.poll_interval, now=True)
        self._renew = LoopingCall(self._renew_leases)
        self._renew.clock = self.clock
        self._renew.start(self.config.lease / 3, now=False)
        log.info("relay {node} started: {route}, {n} connections at most", node=self.node_id,
                 route=f"smarthost {self.config.smarthost}" if self.config.smarthost
                 else "MX delivery", n=self.config.concurrency)

    @defer.inlineCallbacks
    def stopService(self):
        """Fires once nothing of the relay uses the store any more: the claim
        and lease renewal under way are done, every job has finished (within
        C{stop_grace}, else aborted; a settle under way is waited for) and the
        unfinished entries are given back. It never fails: the store may be
        closed as soon as it has fired."""
        super().stopService()
        self._stopping = True
        for loop in (self._poll, self._renew):
            if loop is not None and loop.running:
                loop.stop()
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        # The grace counts from now, whatever is still under way: waiting for
        # a claim first once postponed it past the time it was meant to end.
        grace = self.clock.callLater(self.stop_grace, self._abort_jobs)
        try:
            if self._claiming is not None:
                yield _observe(self._claiming)  # its jobs never start (_run_job)
            while self._jobs:  # those of the claim just done included
                yield defer.DeferredList(list(self._jobs.values()))
            if self._renewing is not None:
                yield _observe(self._renewing)
        finally:
            if grace.active():
                grace.cancel()
        left = sorted(self._in_flight)
        if left:
            try:
                released = yield self.store.release_leases(self.node_id, left)
            except Exception:
                log.failure("relay {node}: giving back {n} unfinished entries failed; "
                            "their leases pass in {lease:g} s", node=self.node_id,
                            n=len(left), lease=self.config.lease)
            else:
                self._in_flight.difference_update(left)
                log.info("relay {node}: gave back {n} unfinished entries",
                         node=self.node_id, n=released)

    def _abort_jobs(self):
        self._aborting = True  # and any job still to be registered (see _start)
        for job in list(self._jobs):
            job.abort()

    # -- polling -------------------------------------------------------------------------

    def wake(self):
        """Look at the queue soon (an enqueue or a release just happened)."""
        if not self.running or self._stopping:
            return
        if self._wake_call is None or not self._wake_call.active():
            self._wake_call = self.clock.callLater(0, self._poll_once)

    def _poll_once(self):
        d = self.claim()
        d.addErrback(lambda f: log.failure("relay: claiming due entries failed", f))
        return d.addCallback(lambda _: None)

    @defer.inlineCallbacks
    def run_once(self):
        """Claim what is due now and deliver it; fires when no job is left
        under way (for tests and tools; the service itself polls)."""
        if self._claiming is not None:
            yield _observe(self._claiming)
        yield self.claim()
        while self._jobs:
            yield defer.DeferredList(list(self._jobs.values()))

    def claim(self):
        """Claim due entries for the free slots and start their jobs.

        @return: Deferred firing with the L{DeliveryJob}s started.
        """
        if self._claiming is not None:
            return defer.succeed([])  # the claim under way takes what is due
        free = self.config.concurrency - len(self._jobs)
        if free <= 0 or self._stopping:
            return defer.succeed([])
        d = self._claiming = self.store.claim_due(
            self.node_id, self.clock.seconds(), self.config.lease, free * BATCH)
        d.addCallback(self._start_jobs)

        def done(result):
            self._claiming = None
            return result
        return d.addBoth(done)

    def _start_jobs(self, claims):
        routes = OrderedDict()
        for claim in claims:
            routes.setdefault(route_of(claim.entry, self.router.uses_smarthost),
                              []).append(claim)
        jobs = []
        for route, group in routes.items():
            for i in range(0, len(group), BATCH):
                jobs.append(self._start(route, group[i:i + BATCH]))
        return jobs

    def _start(self, route, claims):
        job = DeliveryJob(self.router, self.settler, self.store, self.clock, route, claims)
        ids = [c.entry.id for c in claims]
        self._in_flight.update(ids)
        d = self._semaphore.run(self._run_job, job)
        self._jobs[job] = d

        def finished(result):
            del self._jobs[job]
            if not job.aborted:
                self._in_flight.difference_update(ids)
            self.wake()  # a slot is free: more may be due
            return result
        d.addErrback(lambda f: log.failure("relay: delivery to {route} failed", f,
                                           route=route))
        d.addBoth(finished)
        if self._aborting and job in self._jobs:
            job.abort()  # the stop grace passed as it ran (synchronously)
        return job

    def _run_job(self, job):
        if self._stopping:
            job.aborted = True  # never started: its entries are given back
            return None
        return job.run()

    def _renew_leases(self):
        if not self._in_flight or self._renewing is not None:
            return None
        d = self._renewing = self.store.renew_leases(
            self.node_id, sorted(self._in_flight), self.clock.seconds() + self.config.lease)
        d.addErrback(lambda f: log.failure("relay: renewing leases failed", f))

        def done(result):
            self._renewing = None
            return result
        d.addBoth(done)
        self.last_renewal = d
        return d


def _observe(d):
    """A new Deferred firing with None when C{d} fires, leaving C{d}'s own
    result (or failure) to its other callbacks."""
    observer = defer.Deferred()

    def fire(result):
        observer.callback(None)
        return result
    d.addBoth(fire)
    return observer
