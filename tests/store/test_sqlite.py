"""SQLite-only behaviour: group commit. Writes queued together share one
transaction (one fsync), each in its own savepoint, and every caller hears
back only after the commit. Small writes run their statements on the
reactor's thread and commit on the writer thread; other writes run wholly
there."""
from __future__ import annotations

import io
import os
import sqlite3
import threading

from twisted.internet import defer, reactor
from twisted.trial import unittest

from mailgw.interfaces import Conflict, StoreUnavailable
from mailgw.model import MessageEnvelope
from mailgw.store import sqlite as engine
from mailgw.store.sqlite import SQLiteStore


class GroupCommitTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        folder = self.mktemp()
        os.makedirs(folder)
        self.path = os.path.join(folder, "mailgw.sqlite3")
        self.store = SQLiteStore(self.path, reactor)
        yield self.store.start()
        self.addCleanup(self.store.close)
        yield self.store.upgrade()
        yield self.store.add_organization("acme", "Acme")
        self.server = yield self.store.add_server("acme", "web", "Web")
        self.batches = []  # (writes, on the reactor's thread)
        original = self.store._next_batch

        def counting():
            batch, inline = original()
            self.batches.append((len(batch), inline))
            return batch, inline
        self.store._next_batch = counting

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
        self.assertGreater(max(size for size, _ in self.batches), 1)
        # the organization runs on the writer thread, the messages here
        self.assertIn((1, False), self.batches)
        self.assertTrue(any(inline for _, inline in self.batches))
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

    def committed_tokens(self):
        """The tokens another connection (another process) sees."""
        connection = sqlite3.connect(self.path)
        try:
            return {row[0] for row in connection.execute("SELECT token FROM messages")}
        finally:
            connection.close()

    @defer.inlineCallbacks
    def test_a_small_write_is_heard_of_only_after_its_commit(self):
        # Keep the writer thread busy: the statements run here, the commit
        # waits for the thread.
        release = threading.Event()
        busy = self.store._thread.run(release.wait, 10)
        heard = []
        d = self.store.enqueue(self.envelope("T00000000001"), io.BytesIO(b"x" * 100))
        d.addCallback(lambda ids: heard.append(ids) or ids)
        self.assertEqual(self.batches, [(1, True)])
        self.assertEqual(heard, [])
        self.assertEqual(self.committed_tokens(), set())
        release.set()
        yield busy
        ids = yield d
        self.assertEqual(list(ids), ["r@c.example"])
        self.assertEqual(self.committed_tokens(), {"T00000000001"})

    @defer.inlineCallbacks
    def test_large_messages_and_other_writes_run_on_the_writer_thread(self):
        big = engine.INLINE_MESSAGE_BYTES + 1
        sizes = [10, big, 10, 10]
        calls = [self.store.enqueue(self.envelope(f"T{i:011d}"), io.BytesIO(b"y" * size))
                 for i, size in enumerate(sizes)]
        calls.append(self.store.set_organization_suspended("acme", False))
        yield defer.gatherResults(calls)
        # the first small one alone here; then the large one takes everything
        # queued behind it to the thread
        self.assertEqual(self.batches, [(1, True), (4, False)])
        entries = yield self.store.list_entries()
        self.assertEqual(sorted(e.size for e in entries), sorted(sizes))

    @defer.inlineCallbacks
    def test_a_batch_carries_a_bounded_number_of_message_bytes(self):
        size = engine.INLINE_MESSAGE_BYTES
        release = threading.Event()
        busy = self.store._thread.run(release.wait, 10)
        calls = [self.store.enqueue(self.envelope(f"T{i:011d}"), io.BytesIO(b"z" * size))
                 for i in range(6)]
        release.set()
        yield busy
        yield defer.gatherResults(calls)
        per_batch = engine.INLINE_BYTES // size
        self.assertEqual(self.batches, [(1, True), (per_batch, True), (1, True)])

    @defer.inlineCallbacks
    def test_a_write_failing_on_the_reactor_thread_fails_alone(self):
        release = threading.Event()
        busy = self.store._thread.run(release.wait, 10)
        calls = [self.store.enqueue(self.envelope(f"T{i:011d}"), io.BytesIO(b"x" * 10))
                 for i in range(3)]
        orphan = MessageEnvelope("T99999999999", self.server.id + 1000, None, "a@b.example",
                                 ("r@c.example",), None, "ESMTPA")  # no such server
        calls.insert(2, self.store.enqueue(orphan, io.BytesIO(b"x" * 10)))
        release.set()
        yield busy
        results = yield defer.DeferredList(calls, consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True, True, False, True])
        results[2][1].trap(Conflict)
        # tried here, then run again on the writer thread with savepoints
        self.assertEqual(self.batches, [(1, True), (3, True)])
        self.assertEqual(self.committed_tokens(),
                         {"T00000000000", "T00000000001", "T00000000002"})

    @defer.inlineCallbacks
    def test_outside_wal_mode_every_batch_runs_on_the_writer_thread(self):
        # A rollback journal (a file system without shared memory, say):
        # COMMIT would wait for readers, so nothing runs on the reactor's thread.
        configure = engine._configure

        def rollback_journal(connection, **settings):
            configure(connection, **settings)
            connection.execute("PRAGMA journal_mode = DELETE")
        self.patch(engine, "_configure", rollback_journal)
        folder = self.mktemp()
        os.makedirs(folder)
        store = SQLiteStore(os.path.join(folder, "journal.sqlite3"), reactor)
        yield store.start()
        self.addCleanup(store.close)
        yield store.upgrade()
        yield store.add_organization("acme", "Acme")
        server = yield store.add_server("acme", "web", "Web")
        batches = []
        next_batch = store._next_batch

        def recording():
            batch, inline = next_batch()
            batches.append(inline)
            return batch, inline
        store._next_batch = recording
        envelope = MessageEnvelope("T00000000001", server.id, None, "a@b.example",
                                   ("r@c.example",), None, "ESMTPA")
        yield store.enqueue(envelope, io.BytesIO(b"x" * 10))
        self.assertEqual(batches, [False])
        self.assertEqual([e.token for e in (yield store.list_entries())], ["T00000000001"])

    @defer.inlineCallbacks
    def test_a_failed_commit_fails_its_writes_and_the_next_batch_works(self):
        def failing(connection):
            connection.rollback()
            raise sqlite3.OperationalError("disk I/O error")
        self.patch(engine, "_commit", failing)
        failure = yield self.assertFailure(
            self.store.enqueue(self.envelope("T00000000001"), io.BytesIO(b"x")),
            StoreUnavailable)
        self.assertIn("disk I/O error", str(failure))
        self.patch(engine, "_commit", original_commit)
        yield self.store.enqueue(self.envelope("T00000000002"), io.BytesIO(b"x"))
        self.assertEqual(self.committed_tokens(), {"T00000000002"})


original_commit = engine._commit


class InlineBodyTests(unittest.SynchronousTestCase):
    def test_a_body_small_enough_for_the_reactor_thread_is_in_memory(self):
        """The store reads a small message's body on the reactor thread
        (no disk there): every body up to that size is one the submission
        layer has kept in memory, not spooled to a file."""
        from mailgw.submission.message import IncomingMessage
        message = IncomingMessage(b"Received: x\r\n", max_size=1 << 30,
                                  max_header_size=1 << 20, spool_directory=self.mktemp())
        message.write(b"Subject: s\r\n\r\n")
        line = b"y" * 998 + b"\r\n"
        while message.size + len(line) <= engine.INLINE_MESSAGE_BYTES:
            message.write(line)
        self.assertGreater(message.size, engine.INLINE_MESSAGE_BYTES - len(line))
        self.assertFalse(message.spool._rolled)


class WriterThreadTests(unittest.TestCase):
    """The writer's thread of one: calls in order, results and failures back
    on the reactor's thread."""

    def setUp(self):
        self.thread = engine.WriterThread(reactor, "test-writer")
        self.thread.start()
        self.addCleanup(self.thread.stop)

    @defer.inlineCallbacks
    def test_calls_run_in_order_and_answer_on_the_reactor_thread(self):
        ran = []

        def call(n):
            ran.append((n, threading.current_thread().name))
            if n == 1:
                raise ValueError("one")
            return n * 10
        answered = []
        calls = [self.thread.run(call, n) for n in range(3)]
        for d in calls:
            d.addBoth(lambda r: answered.append(threading.current_thread().name) or r)
        results = yield defer.DeferredList(calls, consumeErrors=True)
        self.assertEqual(ran, [(0, "test-writer"), (1, "test-writer"), (2, "test-writer")])
        self.assertEqual([r for ok, r in results if ok], [0, 20])
        results[1][1].trap(ValueError)
        self.assertEqual(set(answered), {threading.current_thread().name})

    def test_stop_runs_every_call_given_before(self):
        release, ran = threading.Event(), []
        self.thread.run(release.wait, 10)
        for n in range(3):
            self.thread.run(ran.append, n)
        release.set()
        self.thread.stop()
        self.assertEqual(ran, [0, 1, 2])
        self.assertFalse(self.thread._thread.is_alive())
