"""SQLite-only behaviour: group commit. Writes queued together share one
transaction (one fsync), each in its own savepoint, and every caller hears
back only after the commit."""
from __future__ import annotations

import io
import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from mailgw.interfaces import Conflict, StoreUnavailable
from mailgw.model import MessageEnvelope
from mailgw.store.sqlite import SQLiteStore


class GroupCommitTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        folder = self.mktemp()
        os.makedirs(folder)
        self.store = SQLiteStore(os.path.join(folder, "mailgw.sqlite3"), reactor)
        yield self.store.start()
        self.addCleanup(self.store.close)
        yield self.store.upgrade()
        yield self.store.add_organization("acme", "Acme")
        self.server = yield self.store.add_server("acme", "web", "Web")
        self.batches = []
        original = self.store._writer.runInteraction

        def counting(fn, batch, *args):
            self.batches.append(len(batch))
            return original(fn, batch, *args)
        self.store._writer.runInteraction = counting

    def envelope(self, token):
        return MessageEnvelope(token, self.server.id, None, "a@b.example", ("r@c.example",),
                               None, "ESMTPA")

    @defer.inlineCallbacks
    def test_concurrent_writes_share_a_commit_and_one_failure_stays_alone(self):
        calls = [self.store.enqueue(self.envelope(f"T{i:011d}"), io.BytesIO(b"x" * i))
                 for i in range(20)]
        calls.insert(7, self.store.add_organization("acme", "Duplicate"))
        results = yield defer.DeferredList(calls, consumeErrors=True)
        failures = [r for ok, r in results if not ok]
        self.assertEqual(len(failures), 1)
        failures[0].trap(Conflict)
        self.assertTrue(all(ok for i, (ok, _) in enumerate(results) if i != 7))
        self.assertLess(len(self.batches), 21)
        self.assertGreater(max(self.batches), 1)
        entries = yield self.store.list_entries()
        self.assertEqual(len(entries), 20)
        self.assertEqual(sorted(e.size for e in entries), list(range(20)))

    @defer.inlineCallbacks
    def test_writes_queued_at_close_fail_cleanly(self):
        pending = [self.store.add_organization(f"o{i}", "O") for i in range(5)]
        yield self.store.close()
        results = yield defer.DeferredList(pending, consumeErrors=True)
        for ok, result in results:
            if not ok:
                result.trap(StoreUnavailable)
        yield self.assertFailure(self.store.add_organization("late", "L"), StoreUnavailable)
