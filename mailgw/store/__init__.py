"""Storage: the tenancy directory and the durable queue, behind the
interfaces of L{mailgw.interfaces}, on SQLite (embedded default) or PostgreSQL.
"""
from __future__ import annotations


#: seconds a store operation may wait for a lock or an answer, when the
#: caller does not say (C{database.store_timeout}'s default)
DEFAULT_STORE_TIMEOUT = 5.0


def open_store(url: str, reactor, pool_size: int = 4,
               store_timeout: float = DEFAULT_STORE_TIMEOUT):
    """An unstarted store for C{url}: C{sqlite:PATH} or C{postgresql://...}.

    Call C{start()} (a Deferred) before use and C{close()} after.

    @param pool_size: connections to PostgreSQL: the writer's two sessions
        and the rest (at least one) for reads (SQLite has its own few).
    @param store_timeout: seconds an operation may wait (a SQLite file locked
        by another process, a PostgreSQL server that does not answer) before
        it fails with L{mailgw.interfaces.StoreUnavailable}, which clients
        hear as a temporary failure.
    """
    if url.startswith("sqlite:"):
        from mailgw.config import sqlite_path
        from mailgw.store.sqlite import SQLiteStore
        return SQLiteStore(sqlite_path(url), reactor, timeout=store_timeout)
    if url.startswith(("postgresql://", "postgres://")):
        from mailgw.store.postgres import PostgresStore
        return PostgresStore(url, reactor, pool_size=pool_size, timeout=store_timeout)
    raise ValueError(f"unknown database URL scheme: {url.split(':', 1)[0]!r}")
