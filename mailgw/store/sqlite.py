"""The embedded engine: SQLite through twisted.enterprise.adbapi.

One writer thread (SQLite has one writer at a time anyway) and a few reader
threads, all in WAL mode with C{synchronous=FULL}, so that a committed
transaction survives a power cut. Writes start with C{BEGIN IMMEDIATE} so that
two processes (the gateway and the command line) wait for each other instead
of failing half-way.

A write waits for another process's lock for at most the store timeout
(C{database.store_timeout}), counted from when it was asked for, and then
fails with L{StoreUnavailable}, so that the client hears 451 soon enough to
retry rather than after its own timeout. Every batch of writes sets SQLite's
busy timeout to what is left of its oldest write's time: a write queued behind
another one that is waiting for the same lock does not wait twice.
"""
from __future__ import annotations

import functools
import os
import sqlite3
import time

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailgw.interfaces import Conflict, StoreUnavailable
from mailgw.store.base import Store, schema_files, split_statements
from mailgw.store.files import private_directory, private_file, tighten
from mailgw.store.webhooks import WebhookOperations

log = Logger()

#: seconds an operation may wait for a lock when the caller does not say
DEFAULT_TIMEOUT = 5.0
#: the files SQLite keeps beside the database (WAL mode uses the first two)
COMPANIONS = ("-wal", "-shm", "-journal")


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
            cursor.execute(statement.sql, statement.params)
            rows = cursor.fetchall() if cursor.description else []
            statement = gen.send(rows)
    except StopIteration as stop:
        return stop.value


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
            results.append((False, e))
        else:
            cursor.execute("RELEASE operation")
            results.append((True, value))
    return results  # adbapi commits; only then does any caller hear back


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
        self._writer = self._reader = None
        self._pending = []
        self._writing = False

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
        self._writer = self._pool(1)
        self._reader = self._pool(self._readers)
        self._writer.start()
        self._reader.start()
        # Open (and create) the file now, so a bad path fails at start.
        return self._run(_nothing)

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
        for pool in (self._writer, self._reader):
            if pool is not None and pool.running:
                pool.close()
        self._writer = self._reader = None
        pending, self._pending = self._pending, []
        for _, _, d, _ in pending:
            d.errback(StoreUnavailable("the store is closed"))
        return defer.succeed(None)

    def _interact(self, pool, begin, fn, args):
        if pool is None:
            return defer.fail(StoreUnavailable("the store is closed"))
        d = pool.runInteraction(lambda cursor: _drive(cursor, begin, fn, args))
        d.addErrback(_translate)
        return d

    def _run(self, fn, *args):
        """A write: queued, and committed with the writes queued alongside it
        (group commit); its Deferred fires only after that commit."""
        if self._writer is None:
            return defer.fail(StoreUnavailable("the store is closed"))
        d = defer.Deferred()
        # the monotonic clock, not the reactor's: SQLite waits in real time
        self._pending.append((fn, args, d, time.monotonic() + self.timeout))
        self._write_next_batch()
        return d

    def _write_next_batch(self):
        if self._writing or not self._pending or self._writer is None:
            return
        batch = self._pending[:self.MAX_BATCH]
        del self._pending[:self.MAX_BATCH]
        self._writing = True
        # The oldest write has waited longest: the batch may wait for the
        # lock only as long as that write still may (0: try once).
        left = min(deadline for _, _, _, deadline in batch) - time.monotonic()
        d = self._writer.runInteraction(_drive_batch, [(fn, args) for fn, args, _, _ in batch],
                                        _milliseconds(max(0.0, left)))
        d.addCallbacks(self._batch_done, self._batch_failed,
                       callbackArgs=(batch,), errbackArgs=(batch,))

    def _batch_done(self, results, batch):
        self._writing = False
        self._write_next_batch()
        for (ok, value), (_, _, d, _) in zip(results, batch):
            if ok:
                d.callback(value)
            else:
                d.errback(_translated(Failure(value, type(value), value.__traceback__)))

    def _batch_failed(self, failure, batch):
        self._writing = False
        self._write_next_batch()
        failure = _translated(failure)
        for _, _, d, _ in batch:
            d.errback(failure)

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
