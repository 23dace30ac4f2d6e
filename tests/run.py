"""`make test`: run the whole trial suite, then print one plain summary line.

Trial's own last line (``PASSED (successes=12)``) is turned into
``trial: 12 passed, 0 failed, 0 skipped`` so that any reader of the log sees
the count. The exit status is trial's.

Before trial starts, one throwaway PostgreSQL cluster is started for the whole
run (see L{tests.pgcluster}) and its URLs exported to the tests:

  - C{MAILGW_TEST_POSTGRES_URL}: a database the tests may use;
  - C{MAILGW_TEST_POSTGRES_ADMIN}: a superuser URL that may create and drop
    databases (each store test makes its own).

The cluster is stopped and deleted whatever happens (failure, Ctrl-C,
SIGTERM). When both variables are already set, that server is used and no
cluster is started. Without PostgreSQL the PostgreSQL tests skip, except
under CI=true, where the run fails at once.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys

from tests import pgcluster


def summarise(last_line: str) -> str | None:
    m = re.match(r"^(PASSED|FAILED) \((.*)\)\s*$", last_line)
    if not m:
        return None
    counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    passed = counts.get("successes", 0)
    failed = sum(counts.get(k, 0) for k in ("failures", "errors", "unexpectedSuccesses"))
    skipped = counts.get("skips", 0) + counts.get("expectedFailures", 0)
    return f"trial: {passed} passed, {failed} failed, {skipped} skipped"


def run_trial(args: list[str]) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "twisted.trial", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    last = ""
    try:
        for line in proc.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            if line.strip():
                last = line.decode("utf-8", "replace")
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: take trial down with us
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    summary = summarise(last)
    if summary:
        print(summary, flush=True)
    return code


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived; unwinds through every C{finally}."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise _Terminated(signum)


@contextlib.contextmanager
def postgres_for_run():
    """Start the run's cluster and export its URLs; yield C{None}, or an exit
    status when the run must not go on (CI=true without PostgreSQL)."""
    if os.environ.get(pgcluster.ADMIN_ENV) and os.environ.get(pgcluster.URL_ENV):
        print(f"postgres: using {pgcluster.ADMIN_ENV} from the environment", flush=True)
        yield None
        return
    cluster = None
    folder = pgcluster.run_directory()
    os.environ[pgcluster.TMPDIR_ENV] = folder
    try:
        try:
            cluster = pgcluster.start_cluster(folder)
            dbname = "mailgw_test"
            _create_database(cluster.url, dbname)
        except Exception as e:
            message = f"PostgreSQL is not available for this run: {e}"
            if pgcluster.in_ci():
                print(f"\nERROR: {message}\nCI=true: the PostgreSQL tests may not skip, "
                      "so the run fails.\n", file=sys.stderr, flush=True)
                print("trial: not run (PostgreSQL missing under CI=true)", flush=True)
                yield 1
                return
            print(f"WARNING: {message}\nWARNING: the PostgreSQL tests will skip.",
                  file=sys.stderr, flush=True)
            if cluster is not None:
                cluster.destroy()
                cluster = None
            yield None
            return
        os.environ[pgcluster.ADMIN_ENV] = cluster.url
        os.environ[pgcluster.URL_ENV] = cluster.database_url(dbname)
        print(f"postgres: throwaway cluster on 127.0.0.1:{cluster.port} "
              f"({cluster.bindir}, {cluster.root})", flush=True)
        yield None
    finally:
        if cluster is not None:
            cluster.destroy()
        pgcluster.destroy_all(folder)  # and any a killed test left behind


def _create_database(admin: str, dbname: str):
    import psycopg2
    conn = psycopg2.connect(admin, connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    previous = {s: signal.signal(s, _raise_terminated)
                for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with postgres_for_run() as refused:
            if refused is not None:
                return refused
            return run_trial(argv or ["tests"])
    except _Terminated as t:
        print(f"tests.run: stopped by signal {t.signum}", file=sys.stderr, flush=True)
        return 128 + t.signum
    except KeyboardInterrupt:
        print("tests.run: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
