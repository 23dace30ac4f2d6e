"""The pipeline session (L{mailgw.store.pgpipe}): statements in one pipeline
with one Sync, bodies as binary parameters, on a real PostgreSQL."""
from __future__ import annotations

import psycopg2
from twisted.internet import defer, error as ierror, reactor, task
from twisted.trial import unittest

from mailgw.store.pgpipe import PipelineError, PipelineSession, to_numbered
from tests import pgcluster
from tests.store import postgres_admin


class NumberedTests(unittest.SynchronousTestCase):
    """C{?} placeholders become the protocol's numbered ones."""

    def test_placeholders_are_numbered_in_order(self):
        self.assertEqual(to_numbered("SELECT ?, ? FROM t WHERE a = ?"),
                         "SELECT $1, $2 FROM t WHERE a = $3")

    def test_quoted_text_and_comments_keep_their_question_marks(self):
        self.assertEqual(to_numbered("SELECT '?', \"a?\", ? -- why?\n, ?"),
                         "SELECT '?', \"a?\", $1 -- why?\n, $2")

    def test_a_doubled_quote_stays_inside_the_literal(self):
        self.assertEqual(to_numbered("SELECT 'it''s ?', ?"), "SELECT 'it''s ?', $1")


def _admin_query(url, sql, params=None):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            if cur.description is None:
                return None
            return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                    for row in cur.fetchall()]
    finally:
        conn.close()


def _descriptors():
    return set(reactor.getReaders()) | set(reactor.getWriters())


class PipelineSessionTests(unittest.TestCase):
    """Against a fresh database of the run's cluster."""

    @defer.inlineCallbacks
    def setUp(self):
        self.url, drop = pgcluster.fresh_database(postgres_admin())
        self.addCleanup(drop)
        _admin_query(self.url, "CREATE TABLE t (k TEXT PRIMARY KEY, v BYTEA)")
        self.session = PipelineSession(reactor)
        self.addCleanup(self.session.close)
        yield self.session.connect(self.url)

    def backend_pid(self):
        return self.session.run([("SELECT pg_backend_pid()", ())])

    @defer.inlineCallbacks
    def test_bodies_travel_in_binary_byte_for_byte(self):
        """Every byte value (NUL, bare CR, 8-bit) and an empty body come back
        as sent; text arrays keep their quotes, backslashes and NULLs."""
        bodies = [bytes(range(256)) * 40, b"", b"\r\n.\r\n\x00", b"\\x41'"]
        rows = yield self.session.run([(
            "SELECT b, octet_length(b) FROM unnest(?::bytea[]) AS u(b)", (bodies,))])
        self.assertEqual(rows, [(b, len(b)) for b in bodies])
        words = ['a"b', "c\\d", None, "é{},", "'"]
        rows = yield self.session.run([("SELECT unnest(?::text[])", (words,))])
        self.assertEqual([r[0] for r in rows], words)

    @defer.inlineCallbacks
    def test_the_statements_of_a_call_commit_together(self):
        """A call's statements run as one transaction, committed before the
        answer: another session sees both rows by then (that a refusal takes
        all of them back is the next test's)."""
        rows = yield self.session.run([
            ("INSERT INTO t VALUES (?, ?)", ("a", b"\x00one")),
            ("INSERT INTO t VALUES (?, ?) RETURNING k", ("b", b"two"))])
        self.assertEqual(rows, [("b",)])
        self.assertEqual(_admin_query(self.url, "SELECT k, v FROM t ORDER BY k"),
                         [("a", b"\x00one"), ("b", b"two")])
        self.assertTrue(self.session.idle())

    @defer.inlineCallbacks
    def test_a_refusal_rolls_back_the_whole_call_and_keeps_the_session(self):
        """A duplicate key in the second statement: nothing of the call
        stays, the error has the server's primary message and SQLSTATE only
        (no DETAIL quoting the row), and the session takes the next call."""
        d = self.session.run([
            ("INSERT INTO t VALUES (?, ?)", ("first", b"1")),
            ("INSERT INTO t VALUES (?, ?)", ("secret-key", b"2")),
            ("INSERT INTO t VALUES (?, ?)", ("secret-key", b"3")),
            ("INSERT INTO t VALUES (?, ?)", ("skipped", b"4"))])
        error = yield self.assertFailure(d, PipelineError)
        self.assertEqual(error.sqlstate, "23505")
        self.assertIn("duplicate key value violates unique constraint", str(error))
        self.assertNotIn("secret-key", str(error))
        self.assertEqual(_admin_query(self.url, "SELECT count(*) FROM t"), [(0,)])
        self.assertTrue(self.session.idle())
        rows = yield self.session.run([("INSERT INTO t VALUES (?, ?) RETURNING k",
                                        ("later", b""))])
        self.assertEqual(rows, [("later",)])

    @defer.inlineCallbacks
    def test_a_statement_is_prepared_once_per_session(self):
        """The server parses a statement once per session; one prepared by a
        call that failed is prepared again."""
        for key in ("a", "b", "c"):
            yield self.session.run([("INSERT INTO t VALUES (?, ?)", (key, b""))])
        count = "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE ?"
        rows = yield self.session.run([(count, ("INSERT INTO t VALUES%",))])
        self.assertEqual(rows, [(1,)])
        update = "UPDATE t SET v = ? WHERE k = ?"
        yield self.assertFailure(self.session.run([("SELECT 1/0", ()), (update, (b"", "a"))]),
                                 PipelineError)
        yield self.session.run([(update, (b"x", "a"))])
        self.assertEqual(_admin_query(self.url, "SELECT v FROM t WHERE k = 'a'"),
                         [(b"x",)])

    @defer.inlineCallbacks
    def test_a_call_larger_than_the_socket_buffers_is_sent_whole(self):
        """Eight MiB of bodies: libpq cannot send it at once, and the session
        waits for the socket to take the rest."""
        bodies = [bytes([i]) * (1 << 20) for i in range(8)]
        rows = yield self.session.run([
            ("INSERT INTO t SELECT 'k' || n, b FROM unnest(?::bytea[]) WITH ORDINALITY "
             "AS u(b, n)", (bodies,)),
            ("SELECT sum(octet_length(v)), count(DISTINCT v) FROM t", ())])
        self.assertEqual(rows, [(8 << 20, 8)])

    @defer.inlineCallbacks
    def test_a_session_ended_by_the_server_is_noticed_and_leaves_nothing_behind(self):
        """The server ends the session while it is idle: the session says so,
        the reactor no longer watches its socket, and a connection made
        next (which may get the same descriptor number) works."""
        ((pid,),) = yield self.backend_pid()
        _admin_query(self.url, "SELECT pg_terminate_backend(%s)", (pid,))
        while self.session.alive():
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertNotIn(self.session, _descriptors())
        self.failureResultOf(self.session.run([("SELECT 1", ())]), ierror.ConnectionDone)
        other = PipelineSession(reactor)
        self.addCleanup(other.close)
        yield other.connect(self.url)
        self.assertEqual((yield other.run([("SELECT 2", ())])), [(2,)])

    @defer.inlineCallbacks
    def test_the_session_lost_while_a_large_call_is_sent_fails_the_call(self):
        """The server ends the session while libpq still sends a large call:
        the call fails, and nothing escapes into the reactor (trial fails a
        test on any error logged meanwhile)."""
        ((pid,),) = yield self.backend_pid()
        d = self.session.run([("SELECT count(*) FROM unnest(?::bytea[])",
                               ([b"x" * (1 << 20)] * 32,))])
        _admin_query(self.url, "SELECT pg_terminate_backend(%s)", (pid,))
        yield self.assertFailure(d, Exception)
        self.assertFalse(self.session.alive())
        self.assertNotIn(self.session, _descriptors())

    @defer.inlineCallbacks
    def test_text_is_utf8_whatever_the_url_asks_for(self):
        """A URL asking for another client encoding does not change what the
        session sends and reads: UTF-8, as the Python side encodes it."""
        session = PipelineSession(reactor)
        self.addCleanup(session.close)
        yield session.connect(self.url + "?client_encoding=LATIN1")
        rows = yield session.run([("SELECT current_setting('client_encoding')", ())])
        self.assertEqual(rows, [("UTF8",)])
        yield session.run([("INSERT INTO t VALUES (?, ?)", ("josé@bücher.example", b""))])
        self.assertEqual(_admin_query(self.url, "SELECT k FROM t"), [("josé@bücher.example",)])

    @defer.inlineCallbacks
    def test_a_libpq_out_of_step_fails_the_call_instead_of_spinning(self):
        """Should libpq have nothing more to give and no Sync to come (it lost
        its place in the pipeline), the call fails and the session is closed,
        rather than the reactor asking forever."""
        real = self.session._pgconn
        d = self.session.run([("SELECT 1", ())])

        class OutOfStep:
            status = real.status
            error_message = b""

            def is_busy(self):
                return 0

            def get_result(self):
                return None

            def finish(self):
                real.finish()
        self.session._pgconn = OutOfStep()
        self.session._collect()
        error = yield self.assertFailure(d, Exception)
        self.assertIn("pipeline out of step", str(error))
        self.assertFalse(self.session.alive())
        self.assertNotIn(self.session, _descriptors())
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_the_session_lost_during_a_call_fails_the_call(self):
        ((pid,),) = yield self.backend_pid()
        d = self.session.run([("SELECT pg_sleep(30)", ())])
        _admin_query(self.url, "SELECT pg_terminate_backend(%s)", (pid,))
        yield self.assertFailure(d, Exception)
        self.assertFalse(self.session.alive())
        self.assertNotIn(self.session, _descriptors())

    @defer.inlineCallbacks
    def test_cancelling_a_call_stops_it_on_the_server_and_hangs_up(self):
        """A deadline cancels the call: the server is asked to stop the
        statement, the session is closed, and the call fails at once."""
        ((pid,),) = yield self.backend_pid()
        d = self.session.run([("SELECT pg_sleep(30)", ())])
        yield task.deferLater(reactor, 0.05, lambda: None)
        d.cancel()
        self.failureResultOf(d, ierror.ConnectionDone)
        self.assertFalse(self.session.alive())
        self.assertNotIn(self.session, _descriptors())
        for _ in range(500):  # the backend ends within moments
            if not _admin_query(self.url, "SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                (pid,)):
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        else:
            self.fail("the backend still runs the cancelled statement")

    @defer.inlineCallbacks
    def test_settings_run_as_it_connects_and_a_refused_one_is_skipped(self):
        session = PipelineSession(reactor, ("SET no_such_setting = 1",
                                            "SET application_name = 'mailgw-test'"))
        self.addCleanup(session.close)
        yield session.connect(self.url)
        rows = yield session.run([("SELECT current_setting('application_name')", ())])
        self.assertEqual(rows, [("mailgw-test",)])
        self.flushLoggedErrors()


class ConnectFailureTests(unittest.TestCase):
    """Connecting where no server answers."""

    @defer.inlineCallbacks
    def test_nothing_listening_fails_with_libpqs_reason_and_leaves_nothing(self):
        port = pgcluster.free_port()
        session = PipelineSession(reactor)
        error = yield self.assertFailure(
            session.connect(f"postgresql://u@127.0.0.1:{port}/db?connect_timeout=5"),
            Exception)
        self.assertIn("127.0.0.1", str(error))
        self.assertFalse(session.alive())
        self.assertNotIn(session, _descriptors())

    @defer.inlineCallbacks
    def test_the_password_stays_out_of_the_reason(self):
        port = pgcluster.free_port()
        session = PipelineSession(reactor)
        error = yield self.assertFailure(
            session.connect(f"postgresql://u:s3cret-pw@127.0.0.1:{port}/db"), Exception)
        self.assertNotIn("s3cret-pw", str(error))

    def test_a_malformed_url_fails_at_once(self):
        session = PipelineSession(reactor)
        self.failureResultOf(session.connect("postgresql://[bad"), Exception)
        self.assertFalse(session.alive())
