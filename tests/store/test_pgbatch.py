"""PostgreSQL's group commit (L{mailgw.store.pgbatch}): writes queued while a
batch runs share the next one, one transaction on the writer connection, each
write in a savepoint of its own; every caller hears back only after the
commit; a failing write fails alone; a batch cut off by an outage fails as a
whole, and the next batch reconnects.

The queue and the statements a batch sends are tested on a fake clock and a
fake cursor; the rest against the run's PostgreSQL (and a private cluster for
the outage)."""
from __future__ import annotations

import io

import psycopg2
from twisted.internet import defer, task, threads
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailgw.interfaces import Conflict, NotFound, StoreUnavailable
from mailgw.model import MessageEnvelope
from mailgw.store.base import Q
from mailgw.store.pgbatch import Batch, GroupCommit, TimedOut, Together
from mailgw.store.pgpipe import PipelineSession
from mailgw.store.postgres import PostgresStore
from tests import pgcluster
from tests.store import postgres_admin, postgres_bindir

_INERROR = psycopg2.extensions.TRANSACTION_STATUS_INERROR


# -- writes (generator functions) the tests queue ----------------------------------

def _select(value):
    yield Q("SELECT ?", (value,))
    return value


def _two_selects(value):
    yield Q("SELECT ?", (value,))
    yield Q("SELECT ?", (value,))
    return value


def _select_many(calls):
    """Several L{_select} in one statement."""
    values = [value for (value,) in calls]
    yield Q("SELECT ?", ("+".join(values),))
    return values


#: L{_select}s share a statement, up to 5 characters' worth; "solo" never
_SELECTS_TOGETHER = Together(size=lambda value: None if value == "solo" else len(value),
                             budget=5, run=_select_many)


def _touch(value):
    """A blind write: one statement, whose answer it does not read."""
    yield Q("UPDATE t SET x = ?", (value,))


def _touch_twice(value):
    """Marked blind, but it is two statements."""
    yield Q("UPDATE t SET x = ?", (value,))
    yield Q("UPDATE t SET y = ?", (value,))


def _fails_before_any_statement():
    raise NotFound("nothing sent")
    yield  # a generator function


def _fails_after_a_statement():
    yield Q("SELECT 1")
    raise NotFound("after one statement")


def _organization_in_transaction(permalink):
    """Insert an organization; the id of the transaction it commits in."""
    yield Q("INSERT INTO organizations (permalink, name, suspended, created_at) "
            "VALUES (?, ?, ?, ?)", (permalink, permalink, False, 0.0))
    rows = yield Q("SELECT pg_current_xact_id()::text")
    return rows[0][0]


def _organization_then_stall(permalink, sending):
    """Insert an organization, then a statement that runs until the server
    goes away; C{sending} fires as that statement is about to be sent."""
    yield Q("INSERT INTO organizations (permalink, name, suspended, created_at) "
            "VALUES (?, ?, ?, ?)", (permalink, permalink, False, 0.0))
    sending.callback(None)
    yield Q("SELECT pg_sleep(60)")


def _deferred_check_table():
    yield Q("CREATE TABLE pairs (a INTEGER NOT NULL, b INTEGER NOT NULL, "
            "CONSTRAINT pairs_a UNIQUE (a) DEFERRABLE INITIALLY DEFERRED)", None)


def _pair(a, b):
    yield Q("INSERT INTO pairs (a, b) VALUES (?, ?)", (a, b))
    return b


# -- the statements of one batch, on a fake cursor -----------------------------

class _FakeConnection:
    closed = False

    def __init__(self):
        self.status = psycopg2.extensions.TRANSACTION_STATUS_IDLE

    def get_transaction_status(self):
        return self.status


class _FakeCursor:
    """Answers every statement at once; one naming a word of C{refuse}
    fails as C{error} would (a unique violation by default): inside a
    transaction block that transaction is then aborted, outside one the
    session is idle again; with C{lose} the session is gone instead."""

    description = None

    def __init__(self, refuse=(), lose=False, error=psycopg2.IntegrityError):
        self.sent, self.refuse, self.lose, self.error = [], refuse, lose, error
        self.connection = _FakeConnection()

    def execute(self, sql, params=None):
        self.sent.append(sql % tuple(repr(p) for p in params) if params else sql)
        connection = self.connection
        if sql.startswith("BEGIN"):
            connection.status = psycopg2.extensions.TRANSACTION_STATUS_INTRANS
        if any(word in self.sent[-1] for word in self.refuse):
            if self.lose:
                connection.closed = True
                return defer.fail(psycopg2.OperationalError("server closed the connection"))
            if connection.status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                connection.status = _INERROR
            return defer.fail(self.error("refused"))
        if sql.endswith("COMMIT"):
            connection.status = psycopg2.extensions.TRANSACTION_STATUS_IDLE
        return defer.succeed(self)


class BatchStatementTests(unittest.SynchronousTestCase):
    def run_batch(self, cursor, writes):
        batch = Batch(writes, timeout=5.0, deadline=5.0)
        d = batch(cursor)
        return batch, self.successResultOf(d) if not cursor.lose else self.failureResultOf(d)

    def test_savepoints_ride_with_the_statements(self):
        """BEGIN, each write's savepoint and the release of the one before
        go in front of the write's first statement: a batch costs its
        statements' round trips and one COMMIT."""
        cursor = _FakeCursor()
        batch, results = self.run_batch(cursor, [(_two_selects, ("a",)), (_select, ("b",)),
                                                 (_select, ("c",))])
        self.assertEqual(results, [(True, "a"), (True, "b"), (True, "c")])
        self.assertEqual(cursor.sent, [
            "BEGIN; SAVEPOINT write; SELECT 'a'",
            "SELECT 'a'",
            "RELEASE SAVEPOINT write; SAVEPOINT write; SELECT 'b'",
            "RELEASE SAVEPOINT write; SAVEPOINT write; SELECT 'c'",
        ])
        self.assertEqual(batch.commit_statement(), "COMMIT")

    def test_a_failed_write_is_rolled_back_to_its_savepoint_alone(self):
        cursor = _FakeCursor(refuse=("'dup'",))
        batch, results = self.run_batch(cursor, [
            (_select, ("a",)), (_two_selects, ("dup",)), (_select, ("b",)),
            (_fails_before_any_statement, ()), (_fails_after_a_statement, ()),
        ])
        self.assertEqual([ok for ok, _ in results], [True, False, True, False, False])
        results[1][1].trap(psycopg2.IntegrityError)
        results[3][1].trap(NotFound)
        results[4][1].trap(NotFound)
        self.assertEqual(cursor.sent, [
            "BEGIN; SAVEPOINT write; SELECT 'a'",
            "RELEASE SAVEPOINT write; SAVEPOINT write; SELECT 'dup'",
            # rolled back to, the savepoint is there again with nothing after it
            "ROLLBACK TO SAVEPOINT write; SELECT 'b'",
            # the write that sent nothing has nothing to undo
            "RELEASE SAVEPOINT write; SAVEPOINT write; SELECT 1",
        ])
        self.assertEqual(batch.commit_statement(), "ROLLBACK TO SAVEPOINT write; COMMIT")

    def test_a_failed_first_write_leaves_the_transaction_usable(self):
        cursor = _FakeCursor(refuse=("'dup'",))
        batch, results = self.run_batch(cursor, [(_select, ("dup",)), (_select, ("a",))])
        self.assertEqual([ok for ok, _ in results], [False, True])
        self.assertEqual(cursor.sent, ["BEGIN; SAVEPOINT write; SELECT 'dup'",
                                       "ROLLBACK TO SAVEPOINT write; SELECT 'a'"])
        self.assertEqual(batch.commit_statement(), "COMMIT")

    def test_a_lost_session_fails_the_whole_batch(self):
        cursor = _FakeCursor(refuse=("'b'",), lose=True)
        batch, reason = self.run_batch(cursor, [(_select, ("a",)), (_select, ("b",)),
                                                (_select, ("c",))])
        reason.trap(psycopg2.OperationalError)
        self.assertEqual(len(cursor.sent), 2)  # nothing after the loss
        self.assertEqual(batch.results, [(True, "a"), None, None])

    def test_an_expired_batch_sends_nothing_more(self):
        cursor = _FakeCursor()
        batch = Batch([(_two_selects, ("a",))], timeout=5.0, deadline=5.0)
        cursor.execute = lambda sql, params=None: (cursor.sent.append(sql), defer.Deferred())[1]
        d = batch(cursor)
        batch.expired = True  # as the pool marks it at the deadline
        batch.current.callback(cursor)
        self.failureResultOf(d, TimedOut)
        self.assertEqual(len(cursor.sent), 1)


class SharedStatementTests(unittest.SynchronousTestCase):
    """Writes of a kind that may share (L{Together}) go in one statement."""

    @staticmethod
    def batch_of(values, together=_SELECTS_TOGETHER):
        """A batch of L{_select}s, which may share statements."""
        return Batch([(_select, (v,)) for v in values], timeout=5.0, deadline=5.0,
                     together={_select: together})

    def run_batch(self, cursor, values):
        batch = self.batch_of(values)
        return batch, self.successResultOf(batch(cursor))

    def test_writes_of_a_kind_share_a_statement_up_to_its_budget(self):
        cursor = _FakeCursor()
        batch, results = self.run_batch(cursor, ["a", "solo", "b", "cd", "efg", "h"])
        self.assertEqual(results, [(True, v) for v in ["a", "solo", "b", "cd", "efg", "h"]])
        self.assertEqual(cursor.sent, [
            "BEGIN; SAVEPOINT write; SELECT 'a+b+cd'",  # where its first write was
            "RELEASE SAVEPOINT write; SAVEPOINT write; SELECT 'solo'",
            "RELEASE SAVEPOINT write; SAVEPOINT write; SELECT 'efg+h'",  # 4 + 3 > 5
        ])
        self.assertEqual(batch.commit_statement(), "COMMIT")

    def test_a_failed_shared_statement_runs_each_alone(self):
        """Only the write at fault fails; the others commit, each in its
        own savepoint."""
        cursor = _FakeCursor(refuse=("dup",))
        batch, results = self.run_batch(cursor, ["a", "dup", "b"])
        self.assertEqual([ok for ok, _ in results], [True, False, True])
        results[1][1].trap(psycopg2.IntegrityError)
        self.assertEqual(cursor.sent, [
            "SELECT 'a+dup+b'",  # alone, outside a transaction: nothing of it stays
            "BEGIN; SAVEPOINT write; SELECT 'a'",
            "RELEASE SAVEPOINT write; SAVEPOINT write; SELECT 'dup'",
            "ROLLBACK TO SAVEPOINT write; SELECT 'b'",
        ])
        self.assertEqual(batch.commit_statement(), "COMMIT")

    def test_a_batch_that_is_one_shared_statement_runs_it_alone(self):
        """One round trip: PostgreSQL commits a statement sent outside a
        transaction block before its rows come back."""
        cursor = _FakeCursor()
        batch, results = self.run_batch(cursor, ["a", "b", "cd"])
        self.assertEqual(results, [(True, v) for v in ["a", "b", "cd"]])
        self.assertEqual(cursor.sent, ["SELECT 'a+b+cd'"])
        self.assertIsNone(batch.commit_statement())
        self.assertTrue(batch.started)

    def test_not_alone_unless_the_pool_allows_it(self):
        cursor = _FakeCursor()
        batch = self.batch_of("ab")
        batch.may_commit_alone = False
        self.assertEqual(self.successResultOf(batch(cursor)), [(True, "a"), (True, "b")])
        self.assertEqual(cursor.sent, ["BEGIN; SAVEPOINT write; SELECT 'a+b'"])
        self.assertEqual(batch.commit_statement(), "COMMIT")

    def test_a_session_lost_under_a_lone_statement_fails_the_batch_as_started(self):
        """The statement may have committed before the session went: the
        pool must not run the batch again on a new one."""
        cursor = _FakeCursor(refuse=("a+b",), lose=True)
        batch = self.batch_of("ab")
        self.failureResultOf(batch(cursor), psycopg2.OperationalError)
        self.assertTrue(batch.started)
        self.assertEqual(cursor.sent, ["SELECT 'a+b'"])

    def test_answer_not_understood_fails_the_batch(self):
        def run(calls):
            yield Q("SELECT ?", ("x",))
            raise KeyError("no such token")
        together = Together(size=len, budget=5, run=run)
        batch = self.batch_of("ab", together)
        self.failureResultOf(batch(_FakeCursor()), KeyError)


class BlindWriteTests(unittest.SynchronousTestCase):
    """Blind writes (one statement, answer unread) travel in front of the
    shared statement, and the batch is one message."""

    @staticmethod
    def batch_of(writes):
        return Batch(writes, timeout=5.0, deadline=5.0, together={_select: _SELECTS_TOGETHER},
                     blind=frozenset({_touch, _touch_twice}))

    def test_blind_writes_ride_in_front_of_the_shared_statement(self):
        cursor = _FakeCursor()
        batch = self.batch_of([(_touch, ("t1",)), (_select, ("a",)), (_touch, ("t2",)),
                               (_select, ("b",))])
        results = self.successResultOf(batch(cursor))
        self.assertEqual(results, [(True, None), (True, "a"), (True, None), (True, "b")])
        self.assertEqual(cursor.sent,
                         ["UPDATE t SET x = 't1';\nUPDATE t SET x = 't2';\nSELECT 'a+b'"])
        self.assertIsNone(batch.commit_statement())
        self.assertTrue(batch.started)
        self.assertTrue(batch.autocommitted)

    def test_blind_writes_alone_are_one_message(self):
        cursor = _FakeCursor()
        batch = self.batch_of([(_touch, ("t1",)), (_touch, ("t2",))])
        self.assertEqual(self.successResultOf(batch(cursor)), [(True, None), (True, None)])
        self.assertEqual(cursor.sent, ["UPDATE t SET x = 't1';\nUPDATE t SET x = 't2'"])
        self.assertIsNone(batch.commit_statement())

    def test_a_refused_message_runs_each_write_in_its_savepoint(self):
        """Nothing of the refused message stays; then only the write at
        fault fails."""
        cursor = _FakeCursor(refuse=("bad",))
        batch = self.batch_of([(_touch, ("bad",)), (_select, ("a",)), (_select, ("b",))])
        results = self.successResultOf(batch(cursor))
        self.assertEqual([ok for ok, _ in results], [False, True, True])
        results[0][1].trap(psycopg2.IntegrityError)
        self.assertEqual(cursor.sent, [
            "UPDATE t SET x = 'bad';\nSELECT 'a+b'",
            "BEGIN; SAVEPOINT write; UPDATE t SET x = 'bad'",
            "ROLLBACK TO SAVEPOINT write; SELECT 'a'",
            "RELEASE SAVEPOINT write; SAVEPOINT write; SELECT 'b'",
        ])
        self.assertEqual(batch.commit_statement(), "COMMIT")

    def test_a_deadlock_on_the_message_runs_each_write_in_its_savepoint(self):
        """A deadlock (or a lock timeout) rolls the whole message back and
        leaves the session idle: the writes run the usual way, and only the
        one that meets it again fails, not the batch."""
        cursor = _FakeCursor(refuse=("bad",), error=psycopg2.errors.DeadlockDetected)
        batch = self.batch_of([(_touch, ("bad",)), (_select, ("a",))])
        results = self.successResultOf(batch(cursor))
        self.assertEqual([ok for ok, _ in results], [False, True])
        results[0][1].trap(psycopg2.errors.DeadlockDetected)
        self.assertEqual(cursor.sent[1], "BEGIN; SAVEPOINT write; UPDATE t SET x = 'bad'")

    def test_a_blind_write_of_two_statements_runs_the_usual_way(self):
        """Found out before anything is sent: both its statements run, in
        a transaction with the others."""
        cursor = _FakeCursor()
        batch = self.batch_of([(_touch_twice, ("t",)), (_select, ("a",))])
        self.assertEqual(self.successResultOf(batch(cursor)), [(True, None), (True, "a")])
        self.assertEqual(cursor.sent, [
            "BEGIN; SAVEPOINT write; UPDATE t SET x = 't'",
            "UPDATE t SET y = 't'",
            "RELEASE SAVEPOINT write; SAVEPOINT write; SELECT 'a'",
        ])
        self.assertEqual(batch.commit_statement(), "COMMIT")

    def test_with_any_other_write_the_usual_way(self):
        cursor = _FakeCursor()
        batch = self.batch_of([(_touch, ("t",)), (_select, ("solo",)), (_select, ("a",))])
        self.successResultOf(batch(cursor))
        self.assertEqual(cursor.sent[0], "BEGIN; SAVEPOINT write; UPDATE t SET x = 't'")
        self.assertEqual(batch.commit_statement(), "COMMIT")

    def test_not_in_one_message_unless_the_pool_allows_it(self):
        cursor = _FakeCursor()
        batch = self.batch_of([(_touch, ("t",)), (_select, ("a",))])
        batch.may_commit_alone = False
        self.successResultOf(batch(cursor))
        self.assertEqual(cursor.sent, ["BEGIN; SAVEPOINT write; UPDATE t SET x = 't'",
                                       "RELEASE SAVEPOINT write; SAVEPOINT write; SELECT 'a'"])


# -- the queue, on a fake clock ----------------------------------------------------

class GroupCommitQueueTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.batches = []
        self.writes = GroupCommit(self.clock, 5.0, self.run_batch, lambda reason, batch: reason)

    def run_batch(self, batch):
        d = defer.Deferred()
        self.batches.append((batch, d))
        return d

    def submit(self, value):
        return self.writes.submit(_select, (value,))

    def test_writes_queued_behind_a_batch_share_the_next(self):
        first = self.submit("a")
        self.assertEqual([len(b.writes) for b, _ in self.batches], [1])
        queued = [self.submit(v) for v in "bcd"]
        self.assertEqual(len(self.batches), 1)  # one batch at a time
        self.assertNoResult(first)
        self.batches[0][1].callback([(True, "a")])
        self.assertEqual(self.successResultOf(first), "a")
        self.assertEqual([b.writes for b, _ in self.batches[1:]],
                         [[(_select, ("b",)), (_select, ("c",)), (_select, ("d",))]])
        for d in queued:
            self.assertNoResult(d)  # not before the batch has committed
        self.batches[1][1].callback([(True, "b"), (False, Failure(Conflict("dup"))),
                                     (True, "d")])
        self.assertEqual(self.successResultOf(queued[0]), "b")
        self.failureResultOf(queued[1], Conflict)
        self.assertEqual(self.successResultOf(queued[2]), "d")

    def test_a_batch_takes_at_most_max_batch_writes(self):
        self.submit("first")
        calls = [self.submit(str(i)) for i in range(100)]
        self.batches[0][1].callback([(True, "first")])
        self.assertEqual(len(self.batches[1][0].writes), GroupCommit.MAX_BATCH)
        self.batches[1][1].callback([(True, None)] * GroupCommit.MAX_BATCH)
        self.assertEqual(len(self.batches[2][0].writes), 100 - GroupCommit.MAX_BATCH)
        self.assertEqual(len([d for d in calls if d.called]), GroupCommit.MAX_BATCH)

    def test_a_batch_has_its_oldest_writes_deadline(self):
        self.submit("a")
        self.clock.advance(1)
        self.submit("b")
        self.clock.advance(1)
        self.submit("c")
        self.batches[0][1].callback([(True, "a")])
        self.assertEqual(self.batches[0][0].deadline, 5.0)
        self.assertEqual(self.batches[1][0].deadline, 6.0)

    def test_a_write_still_queued_at_its_deadline_fails(self):
        self.submit("a")
        self.clock.advance(1)
        late = self.submit("b")
        self.clock.advance(4.999)
        self.assertNoResult(late)
        self.clock.advance(0.001)
        reason = self.failureResultOf(late, StoreUnavailable)
        self.assertIn("no answer within 5 s", str(reason.value))
        self.batches[0][1].callback([(True, "a")])
        self.assertEqual(len(self.batches), 1)  # it left the queue

    def test_a_failed_batch_fails_each_of_its_writes(self):
        self.submit("a")
        calls = [self.submit(v) for v in "bc"]
        self.batches[0][1].callback([(True, "a")])
        self.batches[1][1].errback(StoreUnavailable("postgresql: server closed the connection"))
        for d in calls:
            self.failureResultOf(d, StoreUnavailable)
        after = self.submit("d")  # the next batch goes ahead
        self.assertEqual(len(self.batches), 3)
        self.batches[2][1].callback([(True, "d")])
        self.assertEqual(self.successResultOf(after), "d")

    def test_close_fails_the_waiting_writes_and_every_later_one(self):
        self.submit("a")
        waiting = self.submit("b")
        self.writes.close()
        self.failureResultOf(waiting, StoreUnavailable)
        self.failureResultOf(self.submit("c"), StoreUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])


# -- against PostgreSQL ----------------------------------------------------------------

class PostgresGroupCommitTests(unittest.TestCase):
    """On a fresh database of the run's cluster."""

    @defer.inlineCallbacks
    def setUp(self):
        from twisted.internet import reactor
        self.url, drop = pgcluster.fresh_database(postgres_admin())
        self.addCleanup(drop)
        self.store = PostgresStore(self.url, reactor)
        yield self.store.start()
        self.addCleanup(self.store.close)
        yield self.store.upgrade()
        yield self.store.add_organization("acme", "Acme")
        self.server = yield self.store.add_server("acme", "web", "Web")

    def envelope(self, token):
        return MessageEnvelope(token, self.server.id, None, "a@b.example", ("r@c.example",),
                               None, "ESMTPA")

    def count(self, sql):
        """A count through a session of its own: what is committed."""
        conn = psycopg2.connect(self.url)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchone()[0]
        finally:
            conn.close()

    @defer.inlineCallbacks
    def test_writes_queued_together_commit_in_one_transaction(self):
        """The first write goes at once; the nineteen asked for meanwhile
        share the next batch: one transaction, one commit."""
        xids = yield defer.gatherResults(
            [self.store._run(_organization_in_transaction, f"o{i}") for i in range(20)])
        self.assertEqual(len(set(xids)), 2)
        self.assertEqual(len(set(xids[1:])), 1)
        self.assertEqual(self.count("SELECT count(*) FROM organizations"), 21)

    @defer.inlineCallbacks
    def test_one_conflict_does_not_undo_its_neighbours(self):
        """A duplicate token (a unique violation on the server) in the middle
        of a batch fails that write alone, with Conflict; its neighbours,
        before and after, commit."""
        yield self.store.enqueue(self.envelope("T00000000dup"), io.BytesIO(b"first"))
        blocker = self.store._run(_organization_in_transaction, "blocker")
        calls = [self.store.enqueue(self.envelope(f"T{i:011d}"), io.BytesIO(b"x" * i))
                 for i in range(6)]
        calls.insert(3, self.store.enqueue(self.envelope("T00000000dup"), io.BytesIO(b"again")))
        calls.append(self.store.add_organization("acme", "Duplicate"))  # fails last
        yield blocker
        results = yield defer.DeferredList(calls, consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True] * 3 + [False] + [True] * 3 + [False])
        results[3][1].trap(Conflict)
        results[7][1].trap(Conflict)
        entries = yield self.store.list_entries()
        self.assertEqual(sorted(e.size for e in entries), [0, 1, 2, 3, 4, 5, 5])
        self.assertEqual(self.count("SELECT count(*) FROM messages"), 7)

    @defer.inlineCallbacks
    def conflict_in_one_message(self):
        """Touches and messages sent as one message, one of the messages a
        duplicate: C{(statements sent as text on the writer, calls on the
        pipeline session)} from the moment they are asked for."""
        from mailgw.model import generate_key
        credential = yield self.store.add_credential(("acme", "web"), "smtp", generate_key())
        yield self.store.enqueue(self.envelope("T00000000dup"), io.BytesIO(b"first"))
        sent, piped = [], []
        self.patch(Batch, "execute", lambda batch, cursor, sql, params=None: (
            sent.append(sql), cursor.execute(sql, params))[1])
        run = PipelineSession.run
        self.patch(PipelineSession, "run", lambda session, statements: (
            piped.append([sql for sql, _ in statements]), run(session, statements))[1])
        blocker = self.store._run(_organization_in_transaction, "blocker")
        calls = [self.store.touch_credential(credential.id, 42.0),
                 self.store.enqueue(self.envelope("T00000000001"), io.BytesIO(b"one")),
                 self.store.enqueue(self.envelope("T00000000dup"), io.BytesIO(b"again")),
                 self.store.enqueue(self.envelope("T00000000002"), io.BytesIO(b"two"))]
        yield blocker
        del sent[:sent.index("COMMIT") + 1]  # the blocker's
        results = yield defer.DeferredList(calls, consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True, True, False, True])
        results[2][1].trap(Conflict)
        self.assertEqual(self.count(f"SELECT last_used_at FROM credentials "
                                    f"WHERE id = {credential.id}"), 42.0)
        self.assertEqual(self.count("SELECT count(*) FROM messages"), 3)
        self.assertEqual(self.count("SELECT count(*) FROM message_chunks"), 3)
        return sent, piped

    @defer.inlineCallbacks
    def test_a_conflict_in_one_message_undoes_none_of_the_rest(self):
        """On the pipeline session: nothing of the refused message stays,
        then on the writer the duplicate fails alone and the touches and the
        other messages commit."""
        sent, piped = yield self.conflict_in_one_message()
        self.assertEqual(len(piped), 1)
        self.assertTrue(piped[0][0].startswith("UPDATE credentials SET last_used_at"), piped)
        self.assertTrue(piped[0][1].startswith("WITH m AS (INSERT INTO messages"), piped)
        self.assertTrue(sent[0].startswith("BEGIN; SAVEPOINT write; UPDATE credentials"), sent)

    @defer.inlineCallbacks
    def test_a_conflict_in_one_message_of_text_undoes_none_of_the_rest(self):
        """The same, with the pipeline session away: the message goes on the
        writer as text."""
        self.patch(self.store._pool, "_refresh_pipeline", lambda: None)
        self.store._pool.pipeline.close()
        sent, piped = yield self.conflict_in_one_message()
        self.assertEqual(piped, [])
        self.assertTrue(sent[0].startswith("UPDATE credentials SET last_used_at"), sent[0])
        self.assertIn(";\nWITH m AS (INSERT INTO messages", sent[0])
        self.assertTrue(sent[1].startswith("BEGIN; SAVEPOINT write; UPDATE credentials"), sent)

    @defer.inlineCallbacks
    def test_no_write_hears_back_before_its_commit(self):
        """When each caller hears back, another session already sees its
        row: the commit came first."""
        seen = []

        def visible(_, permalink):
            seen.append(self.count(f"SELECT count(*) FROM organizations "
                                   f"WHERE permalink = '{permalink}'"))
        calls = []
        for i in range(5):
            d = self.store.add_organization(f"o{i}", "O")
            calls.append(d.addCallback(visible, f"o{i}"))
        yield defer.gatherResults(calls)
        self.assertEqual(seen, [1] * 5)

    @defer.inlineCallbacks
    def test_a_failed_commit_fails_every_write_of_its_batch(self):
        """Every statement of the batch succeeds but its COMMIT fails (a
        deferred constraint): no write of it is reported stored, none is."""
        yield self.store._run(_deferred_check_table)
        blocker = self.store._run(_pair, 0, 0)
        calls = [self.store._run(_pair, 1, b) for b in range(3)]
        yield blocker
        results = yield defer.DeferredList(calls, consumeErrors=True)
        for ok, reason in results:
            self.assertFalse(ok)
            reason.trap(Conflict)
        self.assertEqual(self.count("SELECT count(*) FROM pairs"), 1)
        self.assertEqual((yield self.store._run(_pair, 1, 9)), 9)  # the writer goes on


class OutageMidBatchTests(unittest.TestCase):
    """The server goes away while a batch runs, on a private cluster."""

    def setUp(self):
        postgres_bindir()
        self.cluster = pgcluster.start_cluster()
        self.addCleanup(self.cluster.destroy)

    @defer.inlineCallbacks
    def test_restart_mid_batch_fails_that_batch_and_later_writes_succeed(self):
        from twisted.internet import reactor
        store = PostgresStore(self.cluster.url, reactor, pool_size=2, timeout=10)
        yield store.start()
        self.addCleanup(store.close)
        yield store.upgrade()
        sending = defer.Deferred()
        blocker = store._run(_organization_in_transaction, "before")
        batch = [store.add_organization("neighbour", "N"),
                 store._run(_organization_then_stall, "stalled", sending),
                 store.add_organization("after", "A")]
        yield blocker
        yield sending  # the batch has run its first write, and is in its second
        yield threads.deferToThread(self.cluster.restart_server)
        results = yield defer.DeferredList(batch, consumeErrors=True)
        for ok, reason in results:
            self.assertFalse(ok)
            reason.trap(StoreUnavailable)
        # the next batch reconnects; nothing of the failed one was stored
        yield store.add_organization("later", "L")
        names = sorted(o.permalink for o in (yield store.list_organizations()))
        self.assertEqual(names, ["before", "later"])
