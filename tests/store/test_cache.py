"""The one-second directory cache: reuse within the TTL, a fresh read after
it, shared concurrent look-ups, failures not cached, bounded size."""
from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

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

    def list_entries(self):
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
