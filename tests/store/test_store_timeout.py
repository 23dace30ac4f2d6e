"""The store timeout (C{database.store_timeout}): a store that cannot get a
lock or an answer fails with L{StoreUnavailable} within that time of the
call, waiting for the lock or for a free connection included, so that the
client hears 451 soon; and it works again once the lock is gone.

Real time with short timeouts: SQLite's busy wait and PostgreSQL's lock
waits are the server's own and cannot run on a fake clock."""
from __future__ import annotations

import os
import sqlite3
import time

import psycopg2
from twisted.internet import defer, reactor
from twisted.trial import unittest

from mailgw.interfaces import StoreUnavailable
from mailgw.store import DEFAULT_STORE_TIMEOUT, open_store
from mailgw.store.postgres import PostgresStore
from mailgw.store.sqlite import SQLiteStore
from tests import pgcluster
from tests.store import postgres_admin

TIMEOUT = 0.5
#: what a failure may take on top of the timeout; less than the timeout, so
#: that a call that waits twice fails the test
SLACK = 0.4


@defer.inlineCallbacks
def timed(d):
    """C{(True, result) or (False, Failure), seconds}: how C{d} ended and when."""
    started = time.monotonic()
    try:
        result = yield d
    except Exception:
        from twisted.python.failure import Failure
        outcome = (False, Failure())
    else:
        outcome = (True, result)
    return outcome, time.monotonic() - started


class OpenStoreTests(unittest.SynchronousTestCase):
    def test_the_timeout_reaches_both_engines(self):
        sqlite_store = open_store("sqlite::memory:", reactor, store_timeout=2.5)
        self.assertIsInstance(sqlite_store, SQLiteStore)
        self.assertEqual(sqlite_store.timeout, 2.5)
        pg_store = open_store("postgresql://u@h/db", reactor, pool_size=2, store_timeout=2.5)
        self.assertIsInstance(pg_store, PostgresStore)
        self.assertEqual(pg_store._timeout, 2.5)

    def test_default(self):
        self.assertEqual(open_store("sqlite::memory:", reactor).timeout, DEFAULT_STORE_TIMEOUT)
        self.assertEqual(open_store("postgresql://u@h/db", reactor)._timeout,
                         DEFAULT_STORE_TIMEOUT)


class SQLiteLockTests(unittest.TestCase):
    """Another connection (as another process would) holds the database
    with C{BEGIN EXCLUSIVE}."""

    @defer.inlineCallbacks
    def setUp(self):
        folder = self.mktemp()
        os.makedirs(folder)
        path = os.path.join(folder, "mailgw.sqlite3")
        self.store = SQLiteStore(path, reactor, timeout=TIMEOUT)
        yield self.store.start()
        self.addCleanup(self.store.close)
        yield self.store.upgrade()
        self.holder = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(self.holder.close)

    @defer.inlineCallbacks
    def test_writes_fail_within_the_timeout_each_then_work_again(self):
        self.holder.execute("BEGIN EXCLUSIVE")
        # The second write queues behind the first, which waits for the lock:
        # it must not wait for the lock again for a whole timeout of its own.
        first, second = yield defer.gatherResults([
            timed(self.store.add_organization("first", "First")),
            timed(self.store.add_organization("second", "Second"))])
        for (ok, failure), took in (first, second):
            self.assertFalse(ok)
            failure.trap(StoreUnavailable)
            self.assertIn("database is locked", str(failure.value))
            self.assertTrue(TIMEOUT * 0.8 <= took < TIMEOUT + SLACK, took)
        # reads go on meanwhile (WAL: readers do not wait for the writer)
        (ok, organizations), took = yield timed(self.store.list_organizations())
        self.assertEqual((ok, organizations), (True, []))
        self.assertLess(took, TIMEOUT)
        self.holder.execute("COMMIT")
        yield self.store.add_organization("third", "Third")
        self.assertEqual([o.permalink for o in (yield self.store.list_organizations())],
                         ["third"])

    @defer.inlineCallbacks
    def test_a_small_write_waits_for_the_lock_on_the_writer_thread(self):
        # small writes run their statements on the reactor's thread, which
        # must never wait for a lock: they go to the writer thread instead
        self.holder.execute("BEGIN EXCLUSIVE")
        (ok, failure), took = yield timed(self.store.touch_credential(1, 0.0))
        self.assertFalse(ok)
        failure.trap(StoreUnavailable)
        self.assertIn("database is locked", str(failure.value))
        self.assertTrue(TIMEOUT * 0.8 <= took < TIMEOUT + SLACK, took)
        # still held: released half-way through the next one's wait
        reactor.callLater(TIMEOUT / 2, self.holder.execute, "COMMIT")
        (ok, _), took = yield timed(self.store.touch_credential(1, 0.0))
        self.assertTrue(ok)
        self.assertTrue(TIMEOUT / 4 <= took < TIMEOUT, took)

    @defer.inlineCallbacks
    def test_a_lock_released_in_time_is_waited_for(self):
        self.holder.execute("BEGIN EXCLUSIVE")
        reactor.callLater(TIMEOUT / 2, self.holder.execute, "COMMIT")
        (ok, _), took = yield timed(self.store.add_organization("acme", "Acme"))
        self.assertTrue(ok)
        self.assertTrue(TIMEOUT / 4 <= took < TIMEOUT, took)


class PostgresLockTests(unittest.TestCase):
    """Another session holds a lock the store's statements need."""

    @defer.inlineCallbacks
    def setUp(self):
        url, drop = pgcluster.fresh_database(postgres_admin())
        self.addCleanup(drop)
        self.store = PostgresStore(url, reactor, pool_size=1, timeout=TIMEOUT)
        yield self.store.start()
        self.addCleanup(self.store.close)
        yield self.store.upgrade()
        self.holder = psycopg2.connect(url)
        self.addCleanup(self.holder.close)

    @defer.inlineCallbacks
    def test_a_call_waiting_for_a_connection_keeps_its_own_deadline(self):
        self.holder.cursor().execute("LOCK TABLE organizations IN ACCESS EXCLUSIVE MODE")
        # One connection: the second call waits for it while the first waits
        # for the lock; both fail at their own deadline.
        first, second = yield defer.gatherResults([
            timed(self.store.list_organizations()), timed(self.store.list_organizations())])
        for (ok, failure), took in (first, second):
            self.assertFalse(ok)
            failure.trap(StoreUnavailable)
            self.assertIn(f"no answer within {TIMEOUT:g} s", str(failure.value))
            self.assertTrue(TIMEOUT * 0.8 <= took < TIMEOUT + SLACK, took)
        self.holder.rollback()
        self.assertEqual((yield self.store.list_organizations()), [])

    @defer.inlineCallbacks
    def test_writes_fail_within_the_timeout_each_then_work_again(self):
        # EXCLUSIVE: inserts wait, reads do not
        self.holder.cursor().execute("LOCK TABLE organizations IN EXCLUSIVE MODE")
        # The second write queues behind the first one's batch, which waits
        # for the lock: it must not wait a whole timeout after that batch.
        first, second = yield defer.gatherResults([
            timed(self.store.add_organization("first", "First")),
            timed(self.store.add_organization("second", "Second"))])
        for (ok, failure), took in (first, second):
            self.assertFalse(ok)
            failure.trap(StoreUnavailable)
            self.assertIn(f"no answer within {TIMEOUT:g} s", str(failure.value))
            self.assertTrue(TIMEOUT * 0.8 <= took < TIMEOUT + SLACK, took)
        # reads go on meanwhile, on the pool
        (ok, organizations), took = yield timed(self.store.list_organizations())
        self.assertEqual((ok, organizations), (True, []))
        self.assertLess(took, TIMEOUT)
        self.holder.rollback()
        yield self.store.add_organization("third", "Third")
        self.assertEqual([o.permalink for o in (yield self.store.list_organizations())],
                         ["third"])

    @defer.inlineCallbacks
    def test_a_message_waiting_on_the_pipeline_session_fails_within_the_timeout(self):
        """A batch of messages on the pipeline session waits for a lock: at
        its deadline the statement is cancelled and the session hung up, the
        caller hears StoreUnavailable in time, nothing of it is stored, and
        the next message is stored."""
        import io
        from mailgw.model import MessageEnvelope
        yield self.store.add_organization("acme", "Acme")
        server = yield self.store.add_server("acme", "web", "Web")
        pipeline = self.store._pool.pipeline
        yield pipeline.run([("SELECT 1", ())])  # warm: the message goes there

        def message(token):
            envelope = MessageEnvelope(token, server.id, None, "a@b.example",
                                       ("r@c.example",), None, "ESMTPA")
            return self.store.enqueue(envelope, io.BytesIO(b"body"))
        self.holder.cursor().execute("LOCK TABLE messages IN EXCLUSIVE MODE")
        (ok, failure), took = yield timed(message("T00000000001"))
        self.assertFalse(ok)
        failure.trap(StoreUnavailable)
        self.assertIn(f"no answer within {TIMEOUT:g} s", str(failure.value))
        self.assertTrue(TIMEOUT * 0.8 <= took < TIMEOUT + SLACK, took)
        self.assertFalse(pipeline.alive())
        self.holder.rollback()
        yield message("T00000000002")
        cur = self.holder.cursor()
        cur.execute("SELECT token FROM messages")
        self.assertEqual(cur.fetchall(), [("T00000000002",)])
        self.holder.rollback()
