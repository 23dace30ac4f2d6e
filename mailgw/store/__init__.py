"""Storage: the tenancy directory and the durable queue, behind the
interfaces of L{mailgw.interfaces}, on SQLite (embedded default) or PostgreSQL.
"""
from __future__ import annotations


def open_store(url: str, reactor, pool_size: int = 4):
    """An unstarted store for C{url}: C{sqlite:PATH} or C{postgresql://...}.

    Call C{start()} (a Deferred) before use and C{close()} after.
    """
    if url.startswith("sqlite:"):
        from mailgw.config import sqlite_path
        from mailgw.store.sqlite import SQLiteStore
        return SQLiteStore(sqlite_path(url), reactor)
    if url.startswith(("postgresql://", "postgres://")):
        from mailgw.store.postgres import PostgresStore
        return PostgresStore(url, reactor, pool_size=pool_size)
    raise ValueError(f"unknown database URL scheme: {url.split(':', 1)[0]!r}")
