"""Group commit on PostgreSQL: writes queue up, and one writer connection
runs them in batches, one transaction (one commit, one WAL flush) for all.

Each write of a batch runs in a savepoint of its own. An error inside a
PostgreSQL transaction aborts all of it unless it is rolled back to a
savepoint (PostgreSQL documentation, SAVEPOINT and ROLLBACK TO SAVEPOINT), so
a write that fails is rolled back to its savepoint and fails alone, and the
others go on and commit. No caller hears back before that COMMIT has returned.

A batch costs the round trips of its writes' own statements plus one, its
COMMIT: BEGIN and the savepoint statements travel in front of the next
statement, in the same simple-query message (PostgreSQL documentation,
Frontend/Backend Protocol, "Multiple Statements in a Simple Query"). Only the
last statement's rows come back, which are the write's own. Writes of a kind
that can share a statement (L{Together}: the enqueues of messages) do, so that
a batch of messages is two round trips, whatever its size: the writer's round
trips come one after the other, each waiting for the reactor to come round.
Most batches take one: a batch that is one shared statement, with blind writes
(one statement each, answer unread: a credential's last use) in front of it,
is sent as one message outside a transaction block, which PostgreSQL commits
as one transaction before it answers (L{Batch._alone}). That message goes on
the pipeline session (L{mailgw.store.pgpipe}), whose parameters travel apart
from the statements, bodies in binary; while that session is away, on the
writer, as text.

The batch as a whole keeps the guarantees of one transaction on the pool
(L{mailgw.store.postgres}): its deadline is that of its oldest write; a lost
connection or an outage fails the whole batch, and the next batch reconnects.
"""
from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.python import failure
from txpostgres.psycopg2_impl import psycopg2

from mailgw.interfaces import StoreUnavailable
from mailgw.store.base import split_placeholders
from mailgw.store.pgpipe import PipelineError

#: the savepoint every write of a batch runs in (one name: the next write
#: releases the last one's before setting its own)
SAVEPOINT = "write"

# what the savepoint holds when a write sends its first statement
_NONE, _CLEAN, _USED = "none", "clean", "used"
_LEAD = {
    _NONE: f"SAVEPOINT {SAVEPOINT}; ",
    _CLEAN: "",  # rolled back to: it is there again, with nothing after it
    _USED: f"RELEASE SAVEPOINT {SAVEPOINT}; SAVEPOINT {SAVEPOINT}; ",
}


class TimedOut(Exception):
    """The call's deadline passed."""


@functools.lru_cache(maxsize=512)
def to_pyformat(sql: str) -> str:
    """C{?} placeholders to psycopg2's C{%s}, with literal C{%} doubled.

    Quoted literals, quoted identifiers and comments keep their C{?}."""
    return "%s".join(piece.replace("%", "%%") for piece in split_placeholders(sql))


def statement_text(statement) -> tuple[str, tuple | None]:
    """What psycopg2 is given for a L{mailgw.store.base.Q}: C{(sql, params)}."""
    if statement.params is None:  # schema text: no placeholders, no % escaping
        return statement.sql, None
    return to_pyformat(statement.sql), tuple(statement.params)


def rows_of(cursor) -> list[tuple]:
    """The rows of the statement C{cursor} ran last, C{bytea} as C{bytes}."""
    if cursor.description is None:
        return []
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
            for row in cursor.fetchall()]


def _idle(cursor) -> bool:
    """Whether the session is still there and outside any transaction: a
    message sent outside a transaction block that failed has been rolled
    back whole (a deadlock or a lock timeout included), rather than lost
    with its connection."""
    connection = cursor.connection
    return (not connection.closed and connection.get_transaction_status()
            == psycopg2.extensions.TRANSACTION_STATUS_IDLE)


def _in_failed_transaction(cursor) -> bool:
    """Whether the session is still there, inside a transaction that one
    statement's error aborted (so that a rollback to a savepoint recovers it),
    rather than gone (a lost connection, a server that shut down)."""
    connection = cursor.connection
    return (not connection.closed and connection.get_transaction_status()
            == psycopg2.extensions.TRANSACTION_STATUS_INERROR)


@dataclass(frozen=True)
class Together:
    """How writes of one kind in a batch share a statement: several in one
    savepoint and one round trip, where each alone would take one or more.
    Should the shared statement fail (one of them at fault, a duplicate say),
    they run again one by one, each in a savepoint of its own, so that only
    the one at fault fails.

    Any order of a batch's writes is one their callers may see: they were
    all asked for while the batch before ran, none waiting for another.

    @ivar size: C{size(*args)}: what a write adds to the statement (the
        bytes it stores), or C{None} when it cannot share one.
    @ivar budget: the most one shared statement may hold.
    @ivar run: C{run([args, ...])}: a store generator doing all of them,
        returning a list of their results in the same order.
    """

    size: Callable
    budget: int
    run: Callable


class Batch:
    """Queued writes run in one transaction, each in a savepoint of its own
    (or, those that share a statement, L{Together}, in one for all).

    The pool runs a batch as it runs one transaction (its deadline, the
    cancel at that deadline and the reconnection of a stale connection apply
    to the batch as a whole), on the writer connection. Calling it with a
    cursor starts the batch over, from its first write.

    C{results} is, once the batch has run, C{(True, value)} or C{(False,
    Failure)} per write in order; the COMMIT comes after.
    """

    #: no BEGIN of its own: it travels with the first statement
    begin = None

    def __init__(self, writes, timeout: float, deadline: float, together=None,
                 blind=frozenset()):
        """
        @param writes: C{(generator function, args)} pairs, in queue order.
        @param timeout: the store timeout, for the error's words.
        @param deadline: when the batch gives up (the oldest write's
            deadline), in the reactor's seconds.
        @param together: C{{generator function: L{Together}}}, for the
            writes that may share statements.
        @param blind: generator functions of writes that are one statement
            whose answer they do not read (a credential's last use), which
            may travel in front of another statement (L{_alone}).
        """
        self.writes = writes
        self.timeout, self.deadline = timeout, deadline
        self.waiting = False
        self.current = None  # the statement in flight: what a deadline cancels
        self.started = False  # a round trip of the batch has succeeded
        self.expired = False
        self.results = []
        self._together = together or {}
        self._blind = blind
        self._todo = deque()  # steps: the indices of the writes run as one
        self._lead = ""  # statements to send in front of the next one
        self._savepoint = _NONE
        self._sent = False  # whether the current step has sent a statement
        #: the batch ran as one message outside a transaction block
        self.autocommitted = False
        #: whether the batch may run as one message outside a transaction
        #: block (L{_alone}) on the writer, as text: set by the pool, for an
        #: idle writer that has just answered
        self.may_commit_alone = True
        #: the session such a message goes on first, its bodies in binary
        #: (L{mailgw.store.pgpipe}): set by the pool, for a pipeline session
        #: that has just answered; or C{None}
        self.pipeline = None
        #: whether a statement of the batch went on the writer
        self.on_writer = False

    def execute(self, cursor, sql, params=None):
        self.on_writer = True
        self.current = cursor.execute(sql, params)
        return self.current

    def _pipeline_ready(self) -> bool:
        return self.pipeline is not None and self.pipeline.idle()

    def commit_statement(self) -> str | None:
        """The COMMIT, behind whatever has not been sent yet (a rollback to
        the savepoint, when the last write failed); C{None} when the batch
        ran as one message of its own, committed as it returned."""
        if self.autocommitted:
            return None
        return self._lead + "COMMIT"

    def __call__(self, cursor):
        self.results = [None] * len(self.writes)
        self.autocommitted = False
        steps = self._steps()
        done = defer.Deferred()
        alone = self.may_commit_alone or self._pipeline_ready()
        plan = self._one_message(steps) if alone else None
        if plan is not None:
            self._alone(cursor, *plan, done)
        else:
            self._begin(cursor, steps, done)
        return done

    def _one_message(self, steps):
        """C{(blind writes, shared step or None)} when the batch may run as
        one message (L{_alone}): blind writes and at most one shared
        statement; else C{None}."""
        blind, shared = [], None
        for step in steps:
            if len(step) == 1 and self.writes[step[0]][0] in self._blind:
                blind.append(step[0])
            elif shared is None and self._shared(step):
                shared = step
            else:
                return None
        if shared is None and not blind:
            return None
        return blind, shared

    def _begin(self, cursor, steps, done):
        self._todo = deque(steps)
        self._lead, self._savepoint = "BEGIN; ", _NONE
        self._next_step(cursor, done)

    def _shared(self, step) -> bool:
        """Whether C{step} is writes that share one statement (L{Together})."""
        fn, args = self.writes[step[0]]
        kind = self._together.get(fn)
        return kind is not None and kind.size(*args) is not None

    def _alone(self, cursor, blind, step, done):
        """A batch of one shared statement (the messages queued meanwhile,
        say), with blind writes in front of it, runs as one message outside
        any transaction block: PostgreSQL runs the statements of one
        simple-query message as one transaction and commits it as the
        message ends, before the answer comes back (PostgreSQL
        documentation, Frontend/Backend Protocol, "Multiple Statements in a
        Simple Query"), whose rows are the last statement's. One round trip
        where BEGIN, savepoints and COMMIT take two or more. Should it fail,
        nothing of it stays, and the batch runs the usual way, each write in
        a savepoint of its own, so that only the one at fault fails.

        The message commits in its first round trip: the batch counts as
        started as it is sent, so that a connection lost meanwhile fails it
        (as a COMMIT whose answer was lost does) rather than having the pool
        run it again on a new one.

        With a pipeline session (L{pipeline}), the statements go there, one
        pipeline and one Sync, which PostgreSQL likewise runs as one
        transaction committed before it answers; else on the writer, joined
        in one simple-query message."""
        singles = [[i] for i in blind] + [[i] for i in step or ()]
        # the pipeline session may have gone while the writer got ready
        pipeline = self.pipeline if self._pipeline_ready() else None
        if pipeline is None and not self.may_commit_alone:
            self._begin(cursor, singles, done)
            return
        statements, gen = [], None
        try:
            for i in blind:
                fn, args = self.writes[i]
                statements.append(self._blind_statement(i, fn(*args)))
            if step is not None:
                fn, _ = self.writes[step[0]]
                gen = self._together[fn].run([self.writes[i][1] for i in step])
                statements.append(gen.send(None))
            if any(statement.params is None for statement in statements):
                raise ValueError("schema text (no % escaping) cannot be joined")
        except Exception:  # no one message of them: each the usual way
            if gen is not None:
                gen.close()
            self._begin(cursor, singles, done)
            return
        self.started = True
        if pipeline is not None:
            d = self.current = pipeline.run([(q.sql, tuple(q.params)) for q in statements])
        else:
            texts = [statement_text(q) for q in statements]
            # a line each: a statement ending in a comment cannot swallow the next
            d = self.execute(cursor, ";\n".join(sql for sql, _ in texts),
                             tuple(p for _, params in texts for p in params))

        def answered(result):
            self.autocommitted = True
            if gen is None:
                done.callback(self.results)
                return
            try:
                gen.send(result if pipeline is not None else rows_of(result))
            except StopIteration as stop:
                for i, value in zip(step, stop.value):
                    self.results[i] = (True, value)
                done.callback(self.results)
                return
            except Exception:
                # committed, but not understood: its callers hear of a failure
                done.errback(failure.Failure())
                return
            gen.close()  # a shared statement is exactly one: anything else is a bug
            done.errback(failure.Failure(AssertionError("a shared write sent a second "
                                                        "statement")))

        def refused(reason):
            if gen is not None:
                gen.close()
            if pipeline is not None:
                rolled_back = reason.check(PipelineError) and pipeline.idle()
            else:
                rolled_back = reason.check(psycopg2.Error) and _idle(cursor)
            if self.expired or not rolled_back:
                done.errback(reason)  # the batch fails, as a lost session fails it
                return
            # nothing of it stays: should the writer turn out dead at its
            # first round trip, the pool may run the batch again
            self.started = False
            self._begin(cursor, singles, done)
        d.addCallbacks(answered, refused)

    def _blind_statement(self, index, gen):
        """The one statement of a blind write, its result noted now (it does
        not depend on the answer); raises when the write is not one
        statement."""
        statement = gen.send(None)
        try:
            gen.send(None)
        except StopIteration as stop:
            self.results[index] = (True, stop.value)
            return statement
        gen.close()
        raise AssertionError("a blind write sent a second statement")

    def _steps(self) -> list[list[int]]:
        """The writes in steps: alone, or sharing with the next of their
        kind (each shared step where its first write was) up to its budget."""
        steps, filling = [], {}  # Together: (its step being filled, weight)
        for i, (fn, args) in enumerate(self.writes):
            kind = self._together.get(fn)
            size = None if kind is None else kind.size(*args)
            if size is None:
                steps.append([i])
                continue
            step, weight = filling.get(kind, (None, 0))
            if step is None or weight + size > kind.budget:
                step, weight = [], 0
                steps.append(step)
            step.append(i)
            filling[kind] = (step, weight + size)
        return steps

    def _next_step(self, cursor, done):
        if not self._todo:
            done.callback(self.results)
            return
        step = self._todo.popleft()
        fn, args = self.writes[step[0]]
        self._sent = False
        if len(step) == 1:
            gen = fn(*args)
        else:
            gen = self._together[fn].run([self.writes[i][1] for i in step])
        self._advance(cursor, step, gen, done, None)

    def _advance(self, cursor, step, gen, done, rows):
        if self.expired:
            gen.close()
            done.errback(TimedOut())
            return
        try:
            statement = gen.send(rows)
        except StopIteration as stop:
            self._finished(cursor, step, done, True, stop.value)
            return
        except Exception:
            self._finished(cursor, step, done, False, failure.Failure())
            return
        sql, params = statement_text(statement)
        lead, self._lead = self._lead, ""
        if not self._sent:
            lead += _LEAD[self._savepoint]
            self._savepoint, self._sent = _USED, True
        d = self.execute(cursor, lead + sql, params)
        args = (cursor, step, gen, done)
        d.addCallbacks(self._answered, self._refused, callbackArgs=args, errbackArgs=args)

    def _answered(self, result, cursor, step, gen, done):
        self.started = True
        self._advance(cursor, step, gen, done, rows_of(result))

    def _refused(self, reason, cursor, step, gen, done):
        gen.close()
        if self.expired or not _in_failed_transaction(cursor):
            done.errback(reason)  # the whole batch fails
            return
        self.started = True
        self._finished(cursor, step, done, False, reason)

    def _finished(self, cursor, step, done, ok, value):
        if not ok and self._sent:
            self._lead += f"ROLLBACK TO SAVEPOINT {SAVEPOINT}; "
            self._savepoint = _CLEAN
        if len(step) == 1:
            self.results[step[0]] = (ok, value)
        elif ok:
            for i, result in zip(step, value):
                self.results[i] = (True, result)
        else:  # the shared statement failed: each again, alone
            self._todo.extendleft([i] for i in reversed(step))
        self._next_step(cursor, done)


class _Write:
    """One write waiting in the queue."""

    __slots__ = ("fn", "args", "d", "deadline", "timer")

    def __init__(self, fn, args, d, deadline):
        self.fn, self.args, self.d, self.deadline = fn, args, d, deadline
        self.timer = None


class GroupCommit:
    """The writes waiting for the writer connection, committed in batches
    one after the other.

    A write still waiting at its deadline (the store timeout after it was
    asked for) leaves the queue and fails with L{StoreUnavailable}; one in a
    batch has the batch's deadline, which is its own or earlier.
    """

    #: writes committed together at most. PostgreSQL caches 64 subtransaction
    #: ids per session in shared memory, and beyond that every other session
    #: looks them up on disk (PostgreSQL documentation, Transaction Processing,
    #: "Subtransactions"): a batch has at most one per write.
    MAX_BATCH = 64

    def __init__(self, reactor, timeout: float, run_batch, translated, together=None,
                 blind=frozenset()):
        """
        @param run_batch: runs a L{Batch} on the writer connection; returns a
            Deferred firing after the COMMIT with the batch's C{results}.
        @param translated: C{(failure, batch)} to the store's own failure
            (L{mailgw.interfaces.Conflict}, L{StoreUnavailable}).
        @param together: C{{generator function: L{Together}}}, for the
            writes that may share statements.
        @param blind: as for L{Batch}.
        """
        self._together = together or {}
        self._blind = blind
        self._reactor, self._timeout = reactor, timeout
        self._run_batch, self._translated = run_batch, translated
        self._pending = []
        self._writing = False
        self._closed = False

    def submit(self, fn, args):
        """Queue the write C{fn(*args)}; a Deferred firing after its commit."""
        if self._closed:
            return defer.fail(StoreUnavailable("the store is closed"))
        write = _Write(fn, args, defer.Deferred(), self._reactor.seconds() + self._timeout)
        write.timer = self._reactor.callLater(self._timeout, self._give_up, write)
        self._pending.append(write)
        self._next_batch()
        return write.d

    def close(self):
        """Fail every write still waiting; later ones fail at once."""
        self._closed = True
        pending, self._pending = self._pending, []
        for write in pending:
            write.timer.cancel()
            write.d.errback(StoreUnavailable("the store is closed"))

    def _give_up(self, write):
        self._pending.remove(write)
        write.d.errback(StoreUnavailable(f"postgresql: no answer within {self._timeout:g} s"))

    def _next_batch(self):
        if self._writing or not self._pending or self._closed:
            return
        writes = self._pending[:self.MAX_BATCH]
        del self._pending[:self.MAX_BATCH]
        for write in writes:
            write.timer.cancel()
        batch = Batch([(w.fn, w.args) for w in writes], self._timeout,
                      min(w.deadline for w in writes), self._together, self._blind)
        self._writing = True
        d = self._run_batch(batch)
        d.addBoth(self._batch_ended, batch, writes)

    def _batch_ended(self, result, batch, writes):
        self._writing = False
        # the writes queued meanwhile go now, while these callers hear back
        self._next_batch()
        if isinstance(result, failure.Failure):
            reason = self._translated(result, batch)
            for write in writes:
                write.d.errback(reason)
            return
        for (ok, value), write in zip(result, writes):
            if ok:
                write.d.callback(value)
            else:
                write.d.errback(self._translated(value, batch))
