"""mailgw on PostgreSQL in ``make bench``: the "mailgw-pg" row.

A durable throwaway cluster (fsync, synchronous commit and full page writes
on, as in production; ``tests/pgcluster.py`` makes it) on a temporary
directory and a free port, one database seeded as the SQLite one is, and
the same gateway config with the database URL changed. Left out, with a
note, when PostgreSQL's server programs are not installed. The PostgreSQL
server's own CPU is not in the row's server CPU (it shows under "others").
"""
from __future__ import annotations

import os

from bench import servers


def start(folder: str, cert: str, key: str):
    """A cluster and a seeded gateway config on it.

    @return: C{(cluster, config path, credential key)}, or C{(None, why not, None)}.
    """
    from tests import pgcluster
    if pgcluster.find_bindir() is None:
        return None, "PostgreSQL's server programs are not installed (Debian: postgresql)", None
    cluster = pgcluster.Cluster(durable=True)
    try:
        cluster.init()
        cluster.start_server()
        import psycopg2
        connection = psycopg2.connect(cluster.url)
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE bench")
        connection.close()
        home = os.path.join(folder, "postgresql")
        os.makedirs(home)
        config = servers.write_mailgw_config(home, cert, key)
        with open(config) as f:
            text = f.read().replace('url = "sqlite:mailgw.sqlite3"',
                                    f'url = "{cluster.database_url("bench")}"')
        with open(config, "w") as f:
            f.write(text)
        return cluster, config, servers.seed_tenant(config)
    except BaseException:
        cluster.destroy()
        raise


def process(config: str):
    """A fresh gateway on the cluster, named "mailgw-pg" in the table."""
    found = servers.mailgw_process(os.path.dirname(config), config)
    found.name = "mailgw-pg"
    return found
