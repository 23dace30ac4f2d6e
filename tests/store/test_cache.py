"""The one-second directory cache: reuse within the TTL, a fresh read after
it, shared concurrent look-ups, failures not cached, bounded size; and the
class itself: every method of the interfaces it declares written out, each
look-up of L{cache.CACHED} cached and every other call passed through."""
from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mailgw.interfaces import IDirectory, IQueue
from mailgw.store import cache
from mailgw.store.cache import CachingDirectory


class FakeStore:
    def __init__(self):
        self.calls = []
        self.pending = []
        self.value = "first"

    def server_by_id(self, server_id):
        self.calls.append(server_id)
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def list_entries(self, status=None, server=None, limit=None, newest_first=False):
        return "not cached"

    def enqueue(self, envelope, body):
        return defer.succeed({"r@x": 1})

    def answer(self, value=None, fail=None):
        pending, self.pending = self.pending, []
        for d in pending:
            d.errback(fail) if fail else d.callback(value or self.value)


class CachingDirectoryTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = FakeStore()
        self.directory = CachingDirectory(self.store, self.clock)

    def test_reused_within_a_second_then_read_again(self):
        first = self.directory.server_by_id(1)
        second = self.directory.server_by_id(1)
        self.store.answer("server")
        self.assertEqual(self.successResultOf(first), "server")
        self.assertEqual(self.successResultOf(second), "server")
        self.assertEqual(self.store.calls, [1])
        self.clock.advance(0.9)
        self.assertEqual(self.successResultOf(self.directory.server_by_id(1)), "server")
        self.assertEqual(self.store.calls, [1])
        self.clock.advance(0.2)
        later = self.directory.server_by_id(1)
        self.assertEqual(self.store.calls, [1, 1])
        self.store.answer("suspended server")
        self.assertEqual(self.successResultOf(later), "suspended server")

    def test_forget_drops_answers_and_answers_under_way(self):
        first = self.directory.server_by_id(1)
        self.store.answer("server")
        self.successResultOf(first)
        self.directory.forget()  # a change made in this process (the web interface)
        asked = self.directory.server_by_id(1)
        self.assertEqual(self.store.calls, [1, 1])
        self.directory.forget()  # another change while the look-up is under way
        self.store.answer("old answer")
        self.assertEqual(self.successResultOf(asked), "old answer")
        fresh = self.directory.server_by_id(1)
        self.assertEqual(self.store.calls, [1, 1, 1])
        self.store.answer("suspended server")
        self.assertEqual(self.successResultOf(fresh), "suspended server")

    def test_failures_are_not_cached(self):
        d = self.directory.server_by_id(2)
        self.store.answer(fail=RuntimeError("down"))
        self.failureResultOf(d, RuntimeError)
        again = self.directory.server_by_id(2)
        self.assertEqual(self.store.calls, [2, 2])
        self.store.answer("up")
        self.assertEqual(self.successResultOf(again), "up")

    def test_other_calls_pass_through(self):
        self.assertEqual(self.directory.list_entries(), "not cached")

    def test_bounded(self):
        self.patch(cache, "MAX_ENTRIES", 3)
        for i in range(10):
            d = self.directory.server_by_id(i)
            self.store.answer(f"s{i}")
            self.successResultOf(d)
        self.assertEqual(len(self.directory._answers), 3)

    def test_after_enqueue_hook(self):
        woken = []
        self.directory.after_enqueue = lambda: woken.append(True)
        self.assertEqual(self.successResultOf(self.directory.enqueue("e", "b")), {"r@x": 1})
        self.assertEqual(woken, [True])


class RecordingStore:
    """Answers any call at once with C{(name, args, kwargs)}, and records it."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return defer.succeed((name, args, kwargs))
        return call


#: a call of every method of IDirectory and IQueue: its arguments, and what
#: the store receives (the same arguments, unless given)
CALLS = {
    "credential_by_key": (("KEY", "smtp"),),
    "credential_by_id": ((7,),),
    "credentials_of_server": (("acme", "web", "smtp"),),
    "credential_for_address": (("192.0.2.1",),),
    "server_by_id": ((3,),),
    "authorised_domains": ((3,),),
    "touch_credential": ((7, 1000.0),),
    "messages_since": ((3, 500.0),),
    "enqueue": (("envelope", "body"),),
    "list_entries": (("queued", "acme/web", 10),
                     ((), {"status": "queued", "server": "acme/web", "limit": 10,
                           "newest_first": False})),
    "get_entry": ((5,),),
    "queue_counts": ((),),
    "ping": ((),),
    "read_body": ((9,),),
}


class CachingDirectoryClassTests(unittest.TestCase):
    """What the class provides, and which of its calls are cached."""

    def setUp(self):
        self.clock = Clock()
        self.store = RecordingStore()
        self.directory = CachingDirectory(self.store, self.clock)

    def test_provides_its_interfaces(self):
        self.assertTrue(verifyObject(IDirectory, self.directory))
        self.assertTrue(verifyObject(IQueue, self.directory))

    def test_every_method_is_written_out(self):
        names = set(IDirectory.names(all=True)) | set(IQueue.names(all=True))
        self.assertEqual(set(CALLS), names)
        for name in names:
            self.assertIn(name, vars(CachingDirectory), name)
        self.assertFalse(hasattr(CachingDirectory, "__getattr__"))

    def test_nothing_else_reaches_the_store(self):
        # the store's admin and relay side is not for the message path
        self.assertRaises(AttributeError, getattr, self.directory, "add_organization")
        self.assertRaises(AttributeError, getattr, self.directory, "claim_due")

    def call(self, name):
        args = CALLS[name][0]
        return self.successResultOf(getattr(self.directory, name)(*args))

    def expected(self, name):
        args, *received = CALLS[name]
        return (name, *received[0]) if received else (name, args, {})

    def test_cached_lookups(self):
        for name in cache.CACHED:
            self.store.calls = []
            first = self.call(name)
            self.assertEqual(first, self.expected(name))
            self.assertIs(self.call(name), first, name)
            self.assertEqual(self.store.calls, [self.expected(name)], name)
            self.clock.advance(cache.TTL)
            self.assertEqual(self.call(name), first)
            self.assertEqual(len(self.store.calls), 2, name)

    def test_every_other_call_goes_through(self):
        for name in sorted(set(CALLS) - set(cache.CACHED)):
            self.store.calls = []
            self.assertEqual(self.call(name), self.expected(name))
            self.assertEqual(self.call(name), self.expected(name))
            self.assertEqual(self.store.calls, [self.expected(name)] * 2, name)

    def test_list_entries_defaults(self):
        self.directory.list_entries()
        self.assertEqual(self.store.calls, [
            ("list_entries", (), {"status": None, "server": None, "limit": None,
                                  "newest_first": False})])

    def test_answers_are_kept_whatever_their_shape(self):
        # authorised_domains's second element was a bool and became a domain
        # name or None: the cache hands back whatever the store answered
        answers = {1: (frozenset({"acme.example"}), True),
                   2: (frozenset({"acme.example"}), "any.example"),
                   3: (frozenset(), None)}
        asked = []

        def authorised_domains(server_id):
            asked.append(server_id)
            return defer.succeed(answers[server_id])
        self.store.authorised_domains = authorised_domains
        for server_id, answer in answers.items():
            for _ in range(2):
                self.assertIs(
                    self.successResultOf(self.directory.authorised_domains(server_id)),
                    answer)
        self.assertEqual(asked, [1, 2, 3])
