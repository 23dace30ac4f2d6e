"""A short-lived cache of the directory look-ups on the message path.

Every AUTH, RCPT and final dot re-reads the credential, the server and the
authorised domains, so that a suspension, a new or removed credential or a
newly verified domain applies to the next command. Within one second (the spec's bound for any cache) the
answer is reused, and concurrent look-ups of the same thing share one query.
Failures are never cached; the cache holds a bounded number of entries.
"""
from __future__ import annotations

from collections import OrderedDict

from twisted.internet import defer

#: how long an answer is reused (spec §1: "bounded to about a second")
TTL = 1.0
MAX_ENTRIES = 10_000
CACHED = ("server_by_id", "credential_by_id", "authorised_domains", "credential_by_key",
          "credentials_of_server", "credential_for_address")


class CachingDirectory:
    """The store, with the L{CACHED} look-ups answered from memory for L{TTL}
    seconds; every other call goes straight through."""

    def __init__(self, store, clock, ttl: float = TTL):
        self._store = store
        self._clock = clock
        self._ttl = ttl
        self._answers = OrderedDict()   # (name, args) -> (expires, value)
        self._pending = {}              # (name, args) -> [waiting Deferreds]
        #: called after each committed enqueue (the relay's wake), or None
        self.after_enqueue = None

    def enqueue(self, envelope, body):
        d = self._store.enqueue(envelope, body)
        if self.after_enqueue is not None:
            d.addCallback(self._enqueued)
        return d

    def _enqueued(self, result):
        self.after_enqueue()
        return result

    def __getattr__(self, name):
        target = getattr(self._store, name)
        if name not in CACHED:
            return target

        def cached(*args):
            return self._lookup(name, args, target)
        setattr(self, name, cached)
        return cached

    def _lookup(self, name, args, target):
        key = (name, args)
        now = self._clock.seconds()
        hit = self._answers.get(key)
        if hit is not None and hit[0] > now:
            return defer.succeed(hit[1])
        waiting = defer.Deferred()
        if key in self._pending:
            self._pending[key].append(waiting)
            return waiting
        self._pending[key] = [waiting]
        d = target(*args)
        d.addCallbacks(self._answered, self._failed, callbackArgs=(key, now),
                       errbackArgs=(key,))
        return waiting

    def _answered(self, value, key, asked_at):
        self._answers[key] = (asked_at + self._ttl, value)
        self._answers.move_to_end(key)
        while len(self._answers) > MAX_ENTRIES:
            self._answers.popitem(last=False)
        for waiting in self._pending.pop(key, []):
            waiting.callback(value)

    def _failed(self, failure, key):
        for waiting in self._pending.pop(key, []):
            waiting.errback(failure)
