"""The embedded engine: SQLite through twisted.enterprise.adbapi.

One writer thread (SQLite has one writer at a time anyway) and a few reader
threads, all in WAL mode with C{synchronous=FULL}, so that a committed
transaction survives a power cut. Writes start with C{BEGIN IMMEDIATE} so that
two processes (the gateway and the command line) wait for each other instead
of failing half-way.

Writes queued together are committed together (group commit). The
statements of a batch of small writes (an accepted message held in memory, a
credential's last use) run on the reactor's thread: they only change pages in
SQLite's own cache, a few microseconds each, where running them on the writer
thread would hand the interpreter lock back and forth at every statement. The
C{COMMIT} that writes and syncs the log runs on the writer thread, and so does
every other batch: one that would wait for another process's lock, or that
carries large messages.

A write waits for another process's lock for at most the store timeout
(C{database.store_timeout}), counted from when it was asked for, and then
fails with L{StoreUnavailable}, so that the client hears 451 soon enough to
retry rather than after its own timeout. Every batch of writes sets SQLite's
busy timeout to what is left of its oldest write's time: a write queued behind
another one that is waiting for the same lock does not wait twice.
"""
from __future__ import annotations

import functools
import io
import os
import queue
import sqlite3
import threading
import time

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailgw.interfaces import Conflict, StoreUnavailable
from mailgw.store.base import (InsertOne, Store, _enqueue, _touch_credential,
                               schema_files, split_statements)
from mailgw.store.files import private_directory, private_file, tighten
from mailgw.store.webhooks import WebhookOperations

log = Logger()

#: seconds an operation may wait for a lock when the caller does not say
DEFAULT_TIMEOUT = 5.0
#: the files SQLite keeps beside the database (WAL mode uses the first two)
COMPANIONS = ("-wal", "-shm", "-journal")
#: message bytes a batch run on the reactor's thread may carry at most: well
#: inside SQLite's default page cache (2 MB), so that its statements never
#: spill pages to the log before the commit
INLINE_BYTES = 1024 * 1024
#: a message larger than this is not held in memory (see
#: mailgw.submission.message), and its batch runs on the writer thread
INLINE_MESSAGE_BYTES = 256 * 1024


def _configure(connection, busy_ms: int):
    connection.isolation_level = None  # we issue BEGIN ourselves
    connection.execute(f"PRAGMA busy_timeout = {busy_ms}")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA foreign_keys = ON")


def _steps(cursor, fn, args):
    """Run the generator C{fn(*args)} statement by statement on C{cursor}."""
    gen = fn(*args)
    try:
        statement = next(gen)
        while True:
            if statement.__class__ is InsertOne:
                cursor.execute(_without_returning(statement.sql), statement.params)
                rows = [(cursor.lastrowid,)]
            else:
                cursor.execute(statement.sql, statement.params)
                rows = cursor.fetchall() if cursor.description else []
            statement = gen.send(rows)
    except StopIteration as stop:
        return stop.value


@functools.lru_cache(maxsize=64)
def _without_returning(sql: str) -> str:
    """The text of an L{InsertOne} without its C{RETURNING id}."""
    head, clause, tail = sql.rpartition(" RETURNING id")
    if not clause or tail.strip():
        raise ValueError(f"not an INSERT ... RETURNING id: {sql!r}")
    return head


def _drive(cursor, begin, fn, args):
    """Run the generator C{fn(*args)} on C{cursor} inside one transaction."""
    cursor.execute(begin)
    return _steps(cursor, fn, args)


def _drive_batch(cursor, batch, busy_ms: int):
    """Group commit: every write of C{batch} in one transaction (one fsync),
    each in a savepoint of its own, so that one that fails undoes only itself.

    @param busy_ms: milliseconds C{BEGIN IMMEDIATE} may wait for another
        connection's write lock (SQLite's busy timeout) before the whole
        batch fails with C{sqlite3.OperationalError} ("database is locked").
    @return: C{[(True, result) or (False, exception), ...]} in batch order.
    """
    cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
    cursor.execute("BEGIN IMMEDIATE")
    results = []
    for fn, args in batch:
        cursor.execute("SAVEPOINT operation")
        try:
            value = _steps(cursor, fn, args)
        except Exception as e:
            cursor.execute("ROLLBACK TO operation")
            cursor.execute("RELEASE operation")
            # without its traceback, whose frames hold this thread's cursor
            results.append((False, e.with_traceback(None)))
        else:
            cursor.execute("RELEASE operation")
            results.append((True, value))
    return results  # the caller commits; only then does any caller hear back


def _drive_inline(cursor, batch):
    """Every write of C{batch} in one transaction without savepoints, not
    waiting for any lock (busy timeout 0). The writes must be re-runnable
    from the start: should one fail, the caller rolls the transaction back
    and runs the whole batch again with L{_drive_batch}, where a failure
    undoes only its own write.

    @return: C{[(True, result), ...]} in batch order.
    """
    cursor.execute("PRAGMA busy_timeout = 0")
    cursor.execute("BEGIN IMMEDIATE")
    return [(True, _steps(cursor, fn, args)) for fn, args in batch]


def _commit(connection):
    """C{COMMIT}; when it fails, roll back, so that the connection is ready
    for the next batch."""
    try:
        connection.commit()
    except BaseException:
        _rollback(connection)
        raise


def _rollback(connection):
    try:
        connection.rollback()
    except sqlite3.Error as e:
        log.warn("sqlite: could not roll back a failed write: {error}", error=e)


def _batch_and_commit(connection, batch, busy_ms: int):
    """L{_drive_batch} and its commit, on the writer thread."""
    try:
        results = _drive_batch(connection.cursor(), batch, busy_ms)
    except BaseException:
        if connection.in_transaction:
            _rollback(connection)
        raise
    _commit(connection)
    return results


class WriterThread:
    """One thread that runs blocking calls one after another, in the order
    they were given, each answered through a Deferred on the reactor's
    thread.

    Twisted's C{ThreadPool} would do, but hands each call through several
    layers of Python on the reactor's thread (its team, worker and queue
    objects); a thread of one needs only a C{SimpleQueue}, whose C{put} is
    one call into C.
    """

    def __init__(self, reactor, name: str):
        self._reactor = reactor
        self._calls = queue.SimpleQueue()
        # A daemon: a process that ends without stopping it is not held up;
        # SQLite's log keeps a commit cut short by that from happening half.
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run(self, fn, *args) -> defer.Deferred:
        """C{fn(*args)} on the thread, after every call given before.

        @return: a Deferred of its result or failure.
        """
        d = defer.Deferred()
        self._calls.put((d, fn, args))
        return d

    def stop(self) -> None:
        """Run every call given so far, then end the thread and wait for it."""
        if self._thread.is_alive():
            self._calls.put(None)
            self._thread.join()

    def _work(self) -> None:
        call_back = self._reactor.callFromThread
        while (call := self._calls.get()) is not None:
            d, fn, args = call
            try:
                outcome, result = d.callback, fn(*args)
            except BaseException:
                outcome, result = d.errback, Failure()
                # its frames (this thread's connection and cursor among them)
                # as text: nothing of them is freed on the reactor's thread
                result.cleanFailure()
            call_back(outcome, result)
            # nothing of it lives on in this thread until the next call
            call = d = fn = args = outcome = result = None


class _Write:
    """One queued write.

    @ivar inline: message bytes it carries when it may run on the reactor's
        thread (0 for none), or C{None} when it must run on the writer's.
    """

    __slots__ = ("fn", "args", "d", "deadline", "inline")

    def __init__(self, fn, args, d, deadline, inline):
        self.fn, self.args, self.d, self.deadline, self.inline = fn, args, d, deadline, inline


class SQLiteStore(WebhookOperations, Store):
    """The store on one SQLite file: a writer thread that commits queued
    writes in batches, and a few reader threads."""

    engine = "sqlite"

    #: writes committed together at most
    MAX_BATCH = 64

    def __init__(self, path: str, reactor, readers: int = 2,
                 timeout: float = DEFAULT_TIMEOUT):
        """
        @param path: the database file, or C{:memory:}.
        @param readers: reader connections (threads).
        @param timeout: seconds an operation may wait for another process's
            lock before it fails with L{StoreUnavailable}.
        """
        super().__init__(reactor)
        self.path = path
        self._reactor = reactor
        self._readers = readers
        self.timeout = timeout
        self._connection = self._thread = self._reader = self._shutdown = None
        self._pending = []
        self._writing = False
        self._inline_allowed = False

    def _pool(self, size):
        return adbapi.ConnectionPool(
            "sqlite3", self.path, check_same_thread=False, timeout=self.timeout,
            cp_min=1, cp_max=size,
            cp_openfun=functools.partial(_configure, busy_ms=_milliseconds(self.timeout)),
            cp_reactor=self._reactor, cp_noisy=False)

    def start(self):
        if self.path != ":memory:":
            try:
                self._make_private()
            except OSError as e:  # as SQLite's own failure to open would be
                return defer.fail(StoreUnavailable(f"sqlite: {e}"))
        self._thread = WriterThread(self._reactor, "mailgw-sqlite-writer")
        self._thread.start()
        self._shutdown = self._reactor.addSystemEventTrigger("during", "shutdown", self.close)
        self._reader = self._pool(self._readers)
        self._reader.start()
        # Open (and create) the file now, so a bad path fails at start.
        d = self._on_thread(self._open)
        d.addCallback(lambda _: self._run(_nothing))
        d.addErrback(self._start_failed)
        return d

    def _open(self):
        connection = sqlite3.connect(self.path, check_same_thread=False)
        try:
            _configure(connection, busy_ms=_milliseconds(self.timeout))
        except BaseException:
            connection.close()
            raise
        # Statements on the reactor's thread only in WAL mode: there COMMIT
        # never waits for readers (in a rollback journal it would, with the
        # busy timeout of 0 those statements run under).
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
        self._inline_allowed = str(mode).lower() == "wal"
        self._connection = connection

    def _start_failed(self, failure):
        self.close()
        return _translated(failure)

    def _on_thread(self, fn, *args):
        return self._thread.run(fn, *args)

    def _make_private(self):
        """The database file (created here, before SQLite opens it, so that
        it is born C{0600}: SQLite would create it C{0644} under the usual
        umask, and gives its companions the main file's mode) and any
        companion left by an earlier run, readable by mailgw's user only; the
        folder too when mailgw creates it (an existing one may be shared)."""
        folder = os.path.dirname(self.path)
        if folder and not os.path.isdir(folder):
            private_directory(folder, log)
        private_file(self.path, log)
        for suffix in COMPANIONS:
            tighten(self.path + suffix, log)

    def close(self):
        shutdown, self._shutdown = self._shutdown, None
        if shutdown is not None:
            try:
                self._reactor.removeSystemEventTrigger(shutdown)
            except (ValueError, KeyError):  # already fired: this is it
                pass
        if self._reader is not None and self._reader.running:
            self._reader.close()
        self._reader = None
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()  # waits for a commit under way
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
        pending, self._pending = self._pending, []
        for write in pending:
            write.d.errback(StoreUnavailable("the store is closed"))
        return defer.succeed(None)

    def _interact(self, pool, begin, fn, args):
        if pool is None:
            return defer.fail(StoreUnavailable("the store is closed"))
        d = pool.runInteraction(lambda cursor: _drive(cursor, begin, fn, args))
        d.addErrback(_translate)
        return d

    def _run(self, fn, *args, inline=None):
        """A write: queued, and committed with the writes queued alongside it
        (group commit); its Deferred fires only after that commit.

        @param inline: the message bytes the write carries if its statements
            may run on the reactor's thread (a few rows), else C{None}.
        """
        if self._thread is None:
            return defer.fail(StoreUnavailable("the store is closed"))
        d = defer.Deferred()
        # the monotonic clock, not the reactor's: SQLite waits in real time
        self._pending.append(_Write(fn, args, d, time.monotonic() + self.timeout, inline))
        self._write_next_batch()
        return d

    # The writes that may run on the reactor's thread: a few rows each, and
    # re-runnable from the start (see _drive_inline).

    def touch_credential(self, credential_id, when):
        return self._run(_touch_credential, credential_id, when, inline=0)

    def enqueue(self, envelope, body):
        size = body.seek(0, io.SEEK_END)
        return self._run(_enqueue, envelope, body, self._now(),
                         inline=size if size <= INLINE_MESSAGE_BYTES else None)

    def _next_batch(self) -> tuple[list, bool]:
        """The writes of the next batch, and whether it runs on the
        reactor's thread: the longest run of small writes at the head of the
        queue (in WAL mode), or else up to L{MAX_BATCH} writes of any kind."""
        pending = self._pending
        count = carried = 0
        for write in pending[:self.MAX_BATCH] if self._inline_allowed else ():
            if write.inline is None or carried + write.inline > INLINE_BYTES:
                break
            carried += write.inline
            count += 1
        inline = count > 0
        count = count or self.MAX_BATCH
        batch = pending[:count]
        del pending[:count]
        return batch, inline

    def _write_next_batch(self):
        if self._writing or not self._pending or self._connection is None:
            return
        batch, inline = self._next_batch()
        self._writing = True
        writes = [(write.fn, write.args) for write in batch]
        # The oldest write has waited longest: the batch may wait for the
        # lock only as long as that write still may (0: try once).
        left = min(write.deadline for write in batch) - time.monotonic()
        busy_ms = _milliseconds(max(0.0, left))
        d = self._inline(writes) if inline else None
        if d is None:
            d = self._on_thread(_batch_and_commit, self._connection, writes, busy_ms)
        d.addCallbacks(self._batch_done, self._batch_failed,
                       callbackArgs=(batch,), errbackArgs=(batch,))

    def _inline(self, writes):
        """Run C{writes} on this thread without waiting for any lock, and
        commit them on the writer thread.

        @return: a Deferred of the results, or C{None} when the batch must
            run on the writer thread after all (another process holds the
            write lock, or one of the writes failed).
        """
        connection = self._connection
        try:
            results = _drive_inline(connection.cursor(), writes)
        except Exception:
            # Nothing of it is committed: rolled back here, and run again on
            # the writer thread, which waits for the lock up to the deadline
            # and keeps a failing write to itself.
            if connection.in_transaction:
                _rollback(connection)
            return None
        d = self._on_thread(_commit, connection)
        d.addCallback(lambda _: results)
        return d

    def _batch_done(self, results, batch):
        self._writing = False
        self._write_next_batch()
        for (ok, value), write in zip(results, batch):
            if ok:
                write.d.callback(value)
            else:
                write.d.errback(_translated(Failure(value, type(value), value.__traceback__)))

    def _batch_failed(self, failure, batch):
        self._writing = False
        self._write_next_batch()
        failure = _translated(failure)
        for write in batch:
            write.d.errback(failure)

    def _read(self, fn, *args):
        return self._interact(self._reader, "BEGIN", fn, args)

    def upgrade(self):
        return self._run(_upgrade).addCallback(self._after_upgrade)


def _milliseconds(seconds: float) -> int:
    return int(seconds * 1000)


def _nothing():
    yield from ()


def _upgrade():
    from mailgw.store.base import Q
    yield Q("CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL DEFAULT (unixepoch()))")
    # every shipped version not applied yet, in order: one added by a later
    # change below a version applied already (work merged out of order) too
    rows = yield Q("SELECT version FROM schema_version")
    done = {r[0] for r in rows}
    applied = []
    for version, sql in schema_files("sqlite"):
        if version in done:
            continue
        for statement in split_statements(sql):
            yield Q(statement)
        yield Q("INSERT INTO schema_version (version) VALUES (?)", (version,))
        applied.append(version)
    return applied


def _translated(failure):
    """The store's own error for a driver failure (others pass unchanged)."""
    try:
        _translate(failure)
    except Exception:
        return Failure()
    return failure


def _translate(failure):
    if failure.check(sqlite3.IntegrityError):
        raise Conflict(str(failure.value))
    if failure.check(sqlite3.Error):
        raise StoreUnavailable(f"sqlite: {failure.value}")
    return failure
