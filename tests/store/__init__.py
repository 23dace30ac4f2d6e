"""Tests of the store: one contract suite run against every engine
(C{test_contract}) and what only PostgreSQL does (C{test_postgres}).

PostgreSQL comes from the test run (C{tests/run.py} starts a throwaway cluster
and exports L{tests.pgcluster.ADMIN_ENV}); without it the PostgreSQL tests
skip, except under CI=true, where they fail.
"""
from __future__ import annotations

from twisted.trial.unittest import FailTest, SkipTest

from tests import pgcluster


def unavailable(reason: str):
    """Skip the test for C{reason}; under CI=true, fail it instead."""
    if pgcluster.in_ci():
        raise FailTest(f"{reason} (CI=true: a test that would skip fails)")
    raise SkipTest(reason)


def postgres_admin() -> str:
    """The run's superuser URL, or skip (fail under CI)."""
    url = pgcluster.admin_url()
    if not url:
        unavailable(f"no PostgreSQL for this run: {pgcluster.ADMIN_ENV} is not set "
                    "(run the tests with `python -m tests.run`)")
    return url


def postgres_bindir() -> str:
    """Where initdb and pg_ctl are, or skip (fail under CI)."""
    bindir = pgcluster.find_bindir()
    if bindir is None:
        unavailable("PostgreSQL server programs (initdb, pg_ctl) not found "
                    "(apt-get install -y postgresql)")
    return bindir
