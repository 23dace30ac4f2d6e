"""The embedded engine: SQLite through twisted.enterprise.adbapi.

One writer thread (SQLite has one writer at a time anyway) and a few reader
threads, all in WAL mode with C{synchronous=FULL}, so that a committed
transaction survives a power cut. Writes start with C{BEGIN IMMEDIATE} so that
two processes (the gateway and the command line) wait for each other instead
of failing half-way.
"""
from __future__ import annotations

import os
import sqlite3

from twisted.enterprise import adbapi

from mailgw.interfaces import Conflict, StoreUnavailable
from mailgw.store.base import Store, schema_files, split_statements

BUSY_TIMEOUT_MS = 10_000


def _configure(connection):
    connection.isolation_level = None  # we issue BEGIN ourselves
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA foreign_keys = ON")


def _drive(cursor, begin, fn, args):
    """Run the generator C{fn(*args)} on C{cursor} inside one transaction."""
    cursor.execute(begin)
    gen = fn(*args)
    try:
        statement = next(gen)
        while True:
            cursor.execute(statement.sql, statement.params)
            rows = cursor.fetchall() if cursor.description else []
            statement = gen.send(rows)
    except StopIteration as stop:
        return stop.value


class SQLiteStore(Store):
    engine = "sqlite"

    def __init__(self, path: str, reactor, readers: int = 2):
        super().__init__(reactor)
        self.path = path
        self._reactor = reactor
        self._readers = readers
        self._writer = self._reader = None

    def _pool(self, size):
        return adbapi.ConnectionPool(
            "sqlite3", self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000,
            cp_min=1, cp_max=size, cp_openfun=_configure, cp_reactor=self._reactor,
            cp_noisy=False)

    def start(self):
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self._writer = self._pool(1)
        self._reader = self._pool(self._readers)
        self._writer.start()
        self._reader.start()
        # Open (and create) the file now, so a bad path fails at start.
        return self._run(_nothing)

    def close(self):
        from twisted.internet import defer
        for pool in (self._writer, self._reader):
            if pool is not None and pool.running:
                pool.close()
        self._writer = self._reader = None
        return defer.succeed(None)

    def _interact(self, pool, begin, fn, args):
        if pool is None:
            from twisted.internet import defer
            return defer.fail(StoreUnavailable("the store is closed"))
        d = pool.runInteraction(lambda cursor: _drive(cursor, begin, fn, args))
        d.addErrback(_translate)
        return d

    def _run(self, fn, *args):
        return self._interact(self._writer, "BEGIN IMMEDIATE", fn, args)

    def _read(self, fn, *args):
        return self._interact(self._reader, "BEGIN", fn, args)

    def upgrade(self):
        return self._run(_upgrade)


def _nothing():
    yield from ()


def _upgrade():
    from mailgw.store.base import Q
    yield Q("CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL DEFAULT (unixepoch()))")
    rows = yield Q("SELECT coalesce(max(version), 0) FROM schema_version")
    current = rows[0][0]
    applied = []
    for version, sql in schema_files("sqlite"):
        if version <= current:
            continue
        for statement in split_statements(sql):
            yield Q(statement)
        yield Q("INSERT INTO schema_version (version) VALUES (?)", (version,))
        applied.append(version)
    return applied


def _translate(failure):
    if failure.check(sqlite3.IntegrityError):
        raise Conflict(str(failure.value))
    if failure.check(sqlite3.Error):
        raise StoreUnavailable(f"sqlite: {failure.value}")
    return failure
