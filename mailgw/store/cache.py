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
from zope.interface import implementer

from mailgw.interfaces import IDirectory, IQueue

#: how long an answer is reused (spec §1: "bounded to about a second")
TTL = 1.0
MAX_ENTRIES = 10_000
#: the look-ups answered from memory (each a method of L{CachingDirectory})
CACHED = ("server_by_id", "credential_by_id", "authorised_domains", "credential_by_key",
          "credentials_of_server", "credential_for_address")


@implementer(IDirectory, IQueue)
class CachingDirectory:
    """The store, with the L{CACHED} look-ups answered from memory for L{TTL}
    seconds; every other call of L{IDirectory} and L{IQueue} goes straight
    through, and a committed enqueue calls L{after_enqueue}.

    An answer is kept as the store gave it, whatever its shape, and shared by
    every caller of the same look-up with the same arguments until it
    expires: callers must not change it.
    """

    def __init__(self, store, clock, ttl: float = TTL):
        """
        @param store: the L{IDirectory} and L{IQueue} that does the work.
        @param clock: an C{IReactorTime}, for the answers' age.
        @param ttl: how long an answer is reused, in seconds.
        """
        self._store = store
        self._clock = clock
        self._ttl = ttl
        self._answers = OrderedDict()   # (name, args) -> (expires, value)
        self._pending = {}              # (name, args) -> [waiting Deferreds]
        #: bumped by L{forget}: answers to questions asked before are not kept
        self._generation = 0
        #: called after each committed enqueue (the relay's wake), or None
        self.after_enqueue = None

    # IDirectory: the look-ups of L{CACHED}

    def credential_by_key(self, key, type):
        return self._lookup("credential_by_key", (key, type),
                            self._store.credential_by_key)

    def credential_by_id(self, credential_id):
        return self._lookup("credential_by_id", (credential_id,),
                            self._store.credential_by_id)

    def credentials_of_server(self, organization, server, type):
        return self._lookup("credentials_of_server", (organization, server, type),
                            self._store.credentials_of_server)

    def credential_for_address(self, address):
        return self._lookup("credential_for_address", (address,),
                            self._store.credential_for_address)

    def server_by_id(self, server_id):
        return self._lookup("server_by_id", (server_id,), self._store.server_by_id)

    def authorised_domains(self, server_id):
        return self._lookup("authorised_domains", (server_id,),
                            self._store.authorised_domains)

    # IDirectory: straight through (writes, and a count that must be current)

    def touch_credential(self, credential_id, when):
        return self._store.touch_credential(credential_id, when)

    def messages_since(self, server_id, since):
        return self._store.messages_since(server_id, since)

    # IQueue: straight through

    def enqueue(self, envelope, body):
        d = self._store.enqueue(envelope, body)
        if self.after_enqueue is not None:
            d.addCallback(self._enqueued)
        return d

    def _enqueued(self, result):
        self.after_enqueue()
        return result

    def list_entries(self, status=None, server=None, limit=None, newest_first=False):
        return self._store.list_entries(status=status, server=server, limit=limit,
                                        newest_first=newest_first)

    def get_entry(self, entry_id):
        return self._store.get_entry(entry_id)

    def queue_counts(self):
        return self._store.queue_counts()

    def ping(self):
        return self._store.ping()

    def read_body(self, message_id):
        return self._store.read_body(message_id)

    # the cache

    def forget(self) -> None:
        """Drop every answer: a change was just made through this process
        (the web interface, docs/web.md), and must apply to the next command
        at once. Look-ups under way still answer their callers, but are not
        kept."""
        self._answers.clear()
        self._generation += 1

    def _lookup(self, name, args, target):
        """The answer of C{target(*args)}: from memory while fresh, else from
        the query already under way for the same C{(name, args)}, else from a
        new one."""
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
        d.addCallbacks(self._answered, self._failed,
                       callbackArgs=(key, now, self._generation), errbackArgs=(key,))
        return waiting

    def _answered(self, value, key, asked_at, generation):
        if generation == self._generation:
            self._answers[key] = (asked_at + self._ttl, value)
            self._answers.move_to_end(key)
            while len(self._answers) > MAX_ENTRIES:
                self._answers.popitem(last=False)
        for waiting in self._pending.pop(key, []):
            waiting.callback(value)

    def _failed(self, failure, key):
        for waiting in self._pending.pop(key, []):
            waiting.errback(failure)
