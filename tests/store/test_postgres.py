"""What only the PostgreSQL engine does: upgrades from two nodes at once,
recovery from an outage, deadlines, and the URL forms libpq accepts."""
from __future__ import annotations

import io
import os
import signal

import psycopg
import psycopg2
from twisted.internet import defer, protocol, task, threads
from twisted.python import log
from twisted.trial import unittest

from mailgw.interfaces import Conflict, StoreUnavailable
from mailgw.model import MessageEnvelope, generate_key
from mailgw.store import open_store, postgres
from mailgw.store.base import Q, _touch_credential, schema_files
from mailgw.store.pgbatch import to_pyformat
from mailgw.store.pgenqueue import enqueue_at_once
from mailgw.store.pgpipe import PipelineSession
from mailgw.store.postgres import PostgresStore, redact
from tests import pgcluster
from tests.store import postgres_admin, postgres_bindir


def _backend_pid():
    rows = yield Q("SELECT pg_backend_pid()")
    return rows[0][0]


def _setting(name):
    rows = yield Q("SELECT current_setting(?)", (name,))
    return rows[0][0]


def _write_something():
    yield Q("INSERT INTO organizations (permalink, name, suspended, created_at) "
            "VALUES (?, ?, ?, ?)", ("x", "x", False, 0.0))


def _two_writes():
    for permalink in ("first", "second"):
        yield Q("INSERT INTO organizations (permalink, name, suspended, created_at) "
                "VALUES (?, ?, ?, ?)", (permalink, permalink, False, 0.0))


def _one_write():
    rows = yield Q("INSERT INTO organizations (permalink, name, suspended, created_at) "
                   "VALUES (?, ?, ?, ?) RETURNING permalink", ("third", "third", False, 0.0))
    return rows[0][0]


def _message(store, server, token):
    envelope = MessageEnvelope(token, server.id, None, "a@b.example",
                               ("r@c.example",), None, "ESMTPA")
    return store.enqueue(envelope, io.BytesIO(b"Subject: x\r\n\r\nbody\r\n"))


def _select(url, sql, params=None):
    """C{sql}'s rows, as a session of its own (not the store's) sees them."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def _last_used_at(url, credential_id):
    return _select(url, "SELECT last_used_at FROM credentials WHERE id = %s",
                   (credential_id,))[0][0]


class PlaceholderTests(unittest.SynchronousTestCase):
    def test_question_marks_become_pyformat(self):
        self.assertEqual(to_pyformat("SELECT a FROM t WHERE b = ? AND c = ?"),
                         "SELECT a FROM t WHERE b = %s AND c = %s")

    def test_literal_percent_is_doubled(self):
        self.assertEqual(to_pyformat("SELECT 5 % 3, 'x%' || ?"), "SELECT 5 %% 3, 'x%%' || %s")

    def test_quoted_question_marks_stay(self):
        self.assertEqual(to_pyformat("SELECT '?', \"a?\", 'it''s ?' , ? -- ? %\n"),
                         "SELECT '?', \"a?\", 'it''s ?' , %s -- ? %%\n")


class RedactTests(unittest.SynchronousTestCase):
    def test_password_is_hidden(self):
        url = "postgresql://mailgw:s3cret@db.example:5433/mailgw?sslmode=require"
        self.assertEqual(redact(url), "postgresql://mailgw:***@db.example:5433/mailgw?sslmode=require")
        store = PostgresStore(url, reactor=None)
        self.assertNotIn("s3cret", repr(store))

    def test_password_parameter_is_hidden(self):
        self.assertEqual(redact("postgresql:///mailgw?host=/run/pg&password=s3cret&x=1"),
                         "postgresql:///mailgw?host=/run/pg&password=***&x=1")

    def test_url_without_password_unchanged(self):
        for url in ("postgresql:///mailgw?host=/run/postgresql", "postgres://u@h/db"):
            self.assertEqual(redact(url), url)

    def test_open_store_dispatches_both_schemes(self):
        for url in ("postgresql://u@h/db", "postgres://u@h/db"):
            self.assertIsInstance(open_store(url, reactor=None, pool_size=2), PostgresStore)


class PostgresStoreTests(unittest.TestCase):
    """On fresh databases of the run's cluster."""

    def setUp(self):
        self.admin = postgres_admin()

    def fresh_url(self):
        url, drop = pgcluster.fresh_database(self.admin)
        self.addCleanup(drop)
        return url

    @defer.inlineCallbacks
    def started(self, url, **kw):
        from twisted.internet import reactor
        store = PostgresStore(url, reactor, **kw)
        yield store.start()
        self.addCleanup(store.close)
        return store

    def record_batches(self) -> list:
        """The batches the writer runs from now on, as it starts each."""
        batches = []
        run_batch = postgres._Pool.run_batch

        def recording(pool, batch):
            batches.append(batch)
            return run_batch(pool, batch)
        self.patch(postgres._Pool, "run_batch", recording)
        return batches

    @defer.inlineCallbacks
    def with_credentials(self, count=1, **kw):
        """C{(url, store, server, credentials)}: a started store on a fresh,
        upgraded database, with one server and C{count} credentials of it."""
        url = self.fresh_url()
        store = yield self.started(url, **kw)
        yield store.upgrade()
        yield store.add_organization("acme", "Acme")
        server = yield store.add_server("acme", "web", "Web")
        credentials = []
        for _ in range(count):
            credentials.append((yield store.add_credential(("acme", "web"), "smtp",
                                                           generate_key())))
        return url, store, server, credentials

    @defer.inlineCallbacks
    def test_concurrent_upgrades(self):
        """Two nodes upgrading one fresh database at once both succeed: one
        applies every version, the other waits for it and applies none."""
        url = self.fresh_url()
        first, second = yield defer.gatherResults(
            [self.started(url), self.started(url)])
        results = yield defer.gatherResults([first.upgrade(), second.upgrade()])
        shipped = [v for v, _ in schema_files("postgresql")]
        self.assertEqual(sorted(results), [[], shipped])
        self.assertEqual((yield first.list_organizations()), [])

    @defer.inlineCallbacks
    def test_reads_are_read_only(self):
        store = yield self.started(self.fresh_url())
        yield store.upgrade()
        yield self.assertFailure(store._read(_write_something), StoreUnavailable)
        yield store._run(_write_something)
        self.assertEqual(len((yield store.list_organizations())), 1)

    @defer.inlineCallbacks
    def test_pool_size_counts_the_writer(self):
        """C{pool_size} connections: the writer's two sessions and the rest
        for reads, at least one of those."""
        for size, expected in ((4, 4), (3, 3), (1, 3)):
            url = self.fresh_url()
            store = yield self.started(url, pool_size=size)
            conn = psycopg2.connect(self.admin)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                (url.rsplit("/", 1)[1],))
                    self.assertEqual(cur.fetchone()[0], expected)
            finally:
                conn.close()
            yield store.close()

    @defer.inlineCallbacks
    def test_messages_commit_alone_only_on_a_writer_that_just_answered(self):
        """A batch of messages may be one statement outside a transaction,
        which cannot be tried again: only on a session that answered within
        WARM seconds; after longer, the usual way, which can, while the
        pipeline session is asked to answer once, for the next batch."""
        from twisted.internet import reactor
        batches = self.record_batches()
        store = yield self.started(self.fresh_url())
        yield store.upgrade()
        yield store.add_organization("acme", "Acme")
        server = yield store.add_server("acme", "web", "Web")
        yield _message(store, server, "T00000000001")
        pipeline = store._pool.pipeline
        store._pool.writer_answered_at = reactor.seconds() - postgres._Pool.WARM - 1
        pipeline.answered_at = reactor.seconds() - postgres._Pool.WARM - 1
        yield _message(store, server, "T00000000002")
        while not pipeline.idle():
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertLess(reactor.seconds() - pipeline.answered_at, postgres._Pool.WARM)
        yield _message(store, server, "T00000000003")
        self.assertEqual([b.autocommitted for b in batches], [False, False, True, False, True])
        self.assertEqual([b.pipeline is pipeline for b in batches[2:]], [True, False, True])
        self.assertEqual(sorted(e.token for e in (yield store.list_entries())),
                         ["T00000000001", "T00000000002", "T00000000003"])

    @defer.inlineCallbacks
    def test_messages_go_as_text_while_the_pipeline_session_cannot_connect(self):
        """A pipeline session that cannot connect (a libpq without pipeline
        mode, say) does not keep the store from starting: it says why, and
        messages go on the writer as text, one message each."""
        def refuse(session, dsn):
            return defer.fail(psycopg.OperationalError("pipeline mode not supported"))
        self.patch(PipelineSession, "connect", refuse)
        messages = []

        def observer(event):
            messages.append(" ".join(map(str, event["message"])))
        log.addObserver(observer)
        self.addCleanup(log.removeObserver, observer)
        batches = self.record_batches()
        url, store, server, _ = yield self.with_credentials()
        self.assertIn(f"postgresql: pipeline session: cannot connect to {redact(url)}: "
                      "pipeline mode not supported; messages go on the writer as text "
                      "meanwhile", messages)
        yield _message(store, server, "T00000000001")
        self.assertEqual([(b.pipeline, b.autocommitted) for b in batches[-1:]], [(None, True)])
        self.assertEqual(_select(url, "SELECT token FROM messages"), [("T00000000001",)])

    @defer.inlineCallbacks
    def test_a_lost_pipeline_session_is_replaced_at_most_once_per_warm_period(self):
        """The server ends the pipeline session: messages go as text, and the
        session is connected again, though not more often than every WARM
        seconds; then messages take it again."""
        from twisted.internet import reactor
        batches = self.record_batches()
        url, store, server, _ = yield self.with_credentials()
        pool = store._pool
        ((pid,),) = yield pool.pipeline.run([("SELECT pg_backend_pid()", ())])
        _select(url, "SELECT pg_terminate_backend(%s)", (pid,))
        while pool.pipeline.alive():
            yield task.deferLater(reactor, 0.01, lambda: None)
        pool._pipeline_tried_at = reactor.seconds()  # as if it had just been tried
        yield _message(store, server, "T00000000001")
        self.assertIsNone(batches[-1].pipeline)
        self.assertFalse(pool.pipeline.busy() or pool.pipeline.alive())
        pool._pipeline_tried_at -= pool.WARM
        yield _message(store, server, "T00000000002")  # starts the reconnection
        self.assertIsNone(batches[-1].pipeline)
        while not pool.pipeline.idle():
            yield task.deferLater(reactor, 0.01, lambda: None)
        yield _message(store, server, "T00000000003")
        self.assertIs(batches[-1].pipeline, pool.pipeline)
        self.assertEqual(_select(url, "SELECT token FROM messages ORDER BY token"),
                         [("T00000000001",), ("T00000000002",), ("T00000000003",)])

    @defer.inlineCallbacks
    def test_a_refusal_on_the_pipeline_with_the_writer_lost_meanwhile_runs_again(self):
        """The pipeline session refuses a batch (a duplicate), which was
        rolled back whole; the writer, where it runs again write by write,
        was lost meanwhile without the store knowing yet: the pool connects a
        new writer and runs the batch again, and only the duplicate fails."""
        batches = self.record_batches()
        url, store, server, _ = yield self.with_credentials()
        yield _message(store, server, "T00000000dup")
        yield store._pool.pipeline.run([("SELECT 1", ())])
        writer_pid = yield store._run(_backend_pid)
        del batches[:]
        # in one turn of the reactor: it cannot have noticed the hang-up
        _select(url, "SELECT pg_terminate_backend(%s)", (writer_pid,))
        calls = [_message(store, server, "T00000000dup"),
                 _message(store, server, "T00000000002")]
        results = yield defer.DeferredList(calls, consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [False, True])
        results[0][1].trap(Conflict)
        self.assertIs(batches[0].pipeline, store._pool.pipeline)
        self.assertNotEqual((yield store._run(_backend_pid)), writer_pid)
        self.assertEqual(_select(url, "SELECT token FROM messages ORDER BY token"),
                         [("T00000000002",), ("T00000000dup",)])

    @defer.inlineCallbacks
    def test_not_one_message_on_a_writer_inside_a_transaction_block(self):
        """A writer left inside a transaction block would run the message
        inside it, and nothing would commit it: then the usual way, which
        ends with COMMIT."""
        batches = self.record_batches()
        url, store, server, _ = yield self.with_credentials()
        _without_pipeline(self, store)
        yield _message(store, server, "T00000000001")  # warm
        yield store._pool.writer.runOperation("BEGIN")
        self.assertTrue(store._pool.writer.alive())
        self.assertFalse(store._pool.writer.idle())
        del batches[:]
        yield _message(store, server, "T00000000002")
        self.assertEqual([b.autocommitted for b in batches], [False])
        self.assertTrue(store._pool.writer.idle())
        self.assertEqual(_select(url, "SELECT token FROM messages ORDER BY token"),
                         [("T00000000001",), ("T00000000002",)])

    @defer.inlineCallbacks
    def test_touch_credential_is_committed_when_it_fires(self):
        """A credential's touch is committed by the time its Deferred fires:
        a session of its own sees the new last_used_at at once, as the store
        does."""
        url, store, _, (credential,) = yield self.with_credentials()
        self.assertIsNone(_last_used_at(url, credential.id))
        yield store.touch_credential(credential.id, 1234.5)
        self.assertEqual(_last_used_at(url, credential.id), 1234.5)
        found, _ = yield store.credential_by_id(credential.id)
        self.assertEqual(found.last_used_at, 1234.5)

    @defer.inlineCallbacks
    def test_touches_and_messages_commit_as_one_message(self):
        """Touches queued with messages ride in front of the messages'
        shared statement: each batch is one message, committed outside a
        transaction block (autocommitted), and both the touches and the
        messages are committed."""
        batches = self.record_batches()
        url, store, server, (first, second) = yield self.with_credentials(2)
        yield store.touch_credential(first.id, 1.0)  # the writer has answered just now
        del batches[:]
        yield defer.gatherResults([
            store.touch_credential(first.id, 100.0),
            _message(store, server, "T00000000001"),
            store.touch_credential(second.id, 200.0),
            _message(store, server, "T00000000002"),
            _message(store, server, "T00000000003"),
        ])
        written = sorted(fn.__name__ for batch in batches for fn, _ in batch.writes)
        self.assertEqual(written, sorted([_touch_credential.__name__] * 2
                                         + [enqueue_at_once.__name__] * 3))
        self.assertEqual([b.autocommitted for b in batches], [True] * len(batches))
        self.assertEqual((_last_used_at(url, first.id), _last_used_at(url, second.id)),
                         (100.0, 200.0))
        self.assertEqual(sorted(e.token for e in (yield store.list_entries())),
                         ["T00000000001", "T00000000002", "T00000000003"])

    @defer.inlineCallbacks
    def test_the_writer_compresses_bodies_with_lz4_where_the_server_can(self):
        batches = self.record_batches()
        url = self.fresh_url()
        store = yield self.started(url)
        conn = psycopg2.connect(self.admin)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                            "WHERE name = 'default_toast_compression'")
                row = cur.fetchone()
        finally:
            conn.close()
        expected = "lz4" if row and row[0] else "pglz"
        self.assertEqual((yield store._run(_setting, "default_toast_compression")), expected)
        self.assertEqual((yield store._read(_setting, "default_toast_compression")), "pglz")
        # a message's body, stored by the pipeline session
        yield store.upgrade()
        yield store.add_organization("acme", "Acme")
        server = yield store.add_server("acme", "web", "Web")
        yield store._pool.pipeline.run([("SELECT 1", ())])
        del batches[:]
        envelope = MessageEnvelope("T00000000001", server.id, None, "a@b.example",
                                   ("r@c.example",), None, "ESMTPA")
        yield store.enqueue(envelope, io.BytesIO(b"Subject: x\r\n\r\n" + b"line\r\n" * 2000))
        self.assertEqual([(b.pipeline is store._pool.pipeline, b.on_writer) for b in batches],
                         [(True, False)])
        self.assertEqual(_select(url, "SELECT pg_column_compression(data) FROM message_chunks"),
                         [(expected,)])

    @defer.inlineCallbacks
    def test_a_setting_the_server_refuses_is_done_without(self):
        self.patch(postgres._Writer, "session_settings",
                   ("SET no_such_setting = 1", "SET application_name = 'w'"))
        messages = []

        def observer(event):
            messages.append(" ".join(map(str, event["message"])))
        log.addObserver(observer)
        self.addCleanup(log.removeObserver, observer)
        store = yield self.started(self.fresh_url())
        yield store.upgrade()
        yield store.add_organization("acme", "Acme")
        self.assertEqual((yield store._run(_setting, "application_name")), "w")
        self.assertIn("postgresql: going on without 'SET no_such_setting = 1': "
                      'unrecognized configuration parameter "no_such_setting"', messages)

    @defer.inlineCallbacks
    def test_url_parameters_reach_libpq(self):
        url = self.fresh_url() + "?application_name=mailgw-test&sslmode=disable"
        store = yield self.started(url)
        self.assertEqual((yield store._read(_setting, "application_name")), "mailgw-test")

    @defer.inlineCallbacks
    def test_unix_socket_url(self):
        url = self.fresh_url()
        conn = psycopg2.connect(self.admin)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW unix_socket_directories")
                folder = cur.fetchone()[0].split(",")[0].strip()
                cur.execute("SHOW port")
                port = cur.fetchone()[0]
        finally:
            conn.close()
        if not os.path.exists(os.path.join(folder, f".s.PGSQL.{port}")):
            raise unittest.SkipTest(f"the server's socket {folder} is not on this machine")
        dbname = url.rsplit("/", 1)[1]
        socket_url = f"postgresql:///{dbname}?host={folder}&port={port}&user=postgres"
        store = yield self.started(socket_url)
        self.assertEqual((yield store.upgrade()), [v for v, _ in schema_files("postgresql")])
        self.assertEqual((yield store.list_organizations()), [])

    @defer.inlineCallbacks
    def test_deadline_cancels_a_blocked_statement(self):
        """A statement that waits past the deadline is cancelled on the server:
        the call fails with StoreUnavailable and the session survives."""
        from twisted.internet import reactor
        url = self.fresh_url()
        store = yield self.started(url, pool_size=1, timeout=0.5)
        yield store.upgrade()
        pid = yield store._read(_backend_pid)
        holder = psycopg2.connect(url)
        self.addCleanup(holder.close)
        holder.cursor().execute("LOCK TABLE organizations IN ACCESS EXCLUSIVE MODE")
        started = reactor.seconds()
        yield self.assertFailure(store.list_organizations(), StoreUnavailable)
        elapsed = reactor.seconds() - started
        self.assertTrue(0.4 <= elapsed < 0.5 + postgres.CANCEL_GRACE, elapsed)
        holder.rollback()
        self.assertEqual((yield store.list_organizations()), [])
        self.assertEqual((yield store._read(_backend_pid)), pid)

    @defer.inlineCallbacks
    def test_deadline_hangs_up_on_a_server_that_does_not_answer(self):
        """When even the cancel goes unanswered (the backend is frozen), the
        connection is closed; the next call gets a new one."""
        from twisted.internet import reactor
        self.patch(postgres, "CANCEL_GRACE", 0.3)
        store = yield self.started(self.fresh_url(), pool_size=1, timeout=0.3)
        yield store.upgrade()
        pid = yield store._read(_backend_pid)
        try:
            os.kill(pid, signal.SIGSTOP)
        except (PermissionError, ProcessLookupError):
            raise unittest.SkipTest("the server's processes are not ours to signal") from None
        self.addCleanup(_continue, pid)
        started = reactor.seconds()
        yield self.assertFailure(store.list_organizations(), StoreUnavailable)
        self.assertLess(reactor.seconds() - started, 0.3 + 0.3 + 1.0)
        _continue(pid)
        self.assertEqual((yield store.list_organizations()), [])
        self.assertNotEqual((yield store._read(_backend_pid)), pid)

    @defer.inlineCallbacks
    def test_start_fails_fast_when_nothing_listens(self):
        from twisted.internet import reactor
        store = PostgresStore(f"postgresql://postgres@127.0.0.1:{pgcluster.free_port()}/x",
                              reactor, timeout=5)
        started = reactor.seconds()
        failure = yield self.assertFailure(store.start(), StoreUnavailable)
        self.assertLess(reactor.seconds() - started, 2)
        self.assertIn("127.0.0.1", str(failure))
        yield self.assertFailure(store.list_organizations(), StoreUnavailable)
        yield store.close()


def _continue(pid):
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


class SilentServerTests(unittest.TestCase):
    """A peer that accepts TCP connections and never says a word."""

    @defer.inlineCallbacks
    def test_connect_deadline(self):
        from twisted.internet import reactor
        accepted = []

        class Silent(protocol.Protocol):
            def connectionMade(self):
                accepted.append(self)

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Silent),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [p.transport.abortConnection() for p in accepted])
        store = PostgresStore(f"postgresql://postgres@127.0.0.1:{port.getHost().port}/x",
                              reactor, pool_size=2, timeout=0.3)
        started = reactor.seconds()
        failure = yield self.assertFailure(store.start(), StoreUnavailable)
        self.assertLess(reactor.seconds() - started, 1.5)
        self.assertIn("within 0.3 s", str(failure))
        yield store.close()


class OutageTests(unittest.TestCase):
    """PostgreSQL goes away and comes back, on a private cluster so that the
    other tests' server stays up."""

    def setUp(self):
        postgres_bindir()
        self.cluster = pgcluster.start_cluster()
        self.addCleanup(self.cluster.destroy)

    @defer.inlineCallbacks
    def test_store_recovers_from_an_outage(self):
        from twisted.internet import reactor
        store = PostgresStore(self.cluster.url, reactor, pool_size=3, timeout=5)
        yield store.start()
        self.addCleanup(store.close)
        yield store.upgrade()
        yield store.add_organization("acme", "Acme")

        # Down, with the reactor running: idle sessions see the server go.
        yield threads.deferToThread(self.cluster.stop_server)
        for _ in range(5):
            started = reactor.seconds()
            yield self.assertFailure(store.list_organizations(), StoreUnavailable)
            self.assertLess(reactor.seconds() - started, 5)
        results = yield defer.DeferredList(
            [store.add_organization(f"o{i}", "O") for i in range(6)], consumeErrors=True)
        for ok, result in results:
            self.assertFalse(ok)
            result.trap(StoreUnavailable)

        # Back: the same store works again, every pooled connection included.
        yield threads.deferToThread(self.cluster.start_server)
        for _ in range(6):
            self.assertEqual([o.permalink for o in (yield store.list_organizations())],
                             ["acme"])
        orgs = yield defer.gatherResults(
            [store.add_organization(f"o{i}", "O") for i in range(6)])
        self.assertEqual(len(orgs), 6)

    @defer.inlineCallbacks
    def test_restart_unseen_by_the_reactor(self):
        """A restart the idle sessions could not notice (the reactor was
        busy): the first call finds its session dead at BEGIN, reconnects and
        succeeds, since nothing of it had run."""
        from twisted.internet import reactor
        store = PostgresStore(self.cluster.url, reactor, pool_size=2, timeout=5)
        yield store.start()
        self.addCleanup(store.close)
        yield store.upgrade()
        self.cluster.stop_server()
        self.cluster.start_server()
        self.assertEqual((yield store.list_organizations()), [])
        yield store.add_organization("acme", "Acme")
        results = yield defer.gatherResults([store.list_organizations() for _ in range(4)])
        self.assertEqual([len(r) for r in results], [1, 1, 1, 1])


def _without_pipeline(case, store):
    """Have C{store} send its messages as text on the writer, as it does
    while its pipeline session is away."""
    case.patch(store._pool, "_refresh_pipeline", lambda: None)
    store._pool.pipeline.close()
