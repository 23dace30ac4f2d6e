"""Throwaway PostgreSQL clusters for the test run.

A cluster is C{initdb} + C{pg_ctl} on a fresh temporary directory, listening on
a free port of 127.0.0.1 and on a Unix socket in that same directory, with
trust authentication for the C{postgres} superuser. As root (initdb refuses
root) the server programs run as the C{postgres} user.

Two uses:
  - C{tests/run.py} starts one cluster for the whole run and exports its URLs
    (L{URL_ENV}, L{ADMIN_ENV}); each test case then makes its own database
    with L{fresh_database}.
  - A test that needs an outage starts its own cluster with L{start_cluster}
    and calls L{Cluster.stop_server} / L{Cluster.start_server}.

The test clusters run with fsync off; the bench starts a durable one (C{durable=True}).
"""
from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from urllib.parse import quote, urlsplit, urlunsplit

#: a database the tests may use on the run's cluster
URL_ENV = "MAILGW_TEST_POSTGRES_URL"
#: a superuser URL (maintenance database) that may CREATE and DROP databases
ADMIN_ENV = "MAILGW_TEST_POSTGRES_ADMIN"
#: overrides where initdb and pg_ctl are looked for
BINDIR_ENV = "MAILGW_PG_BINDIR"
#: where clusters are made by default: the run's folder, which the runner
#: sweeps at the end, so a test killed before its cleanup leaks no server
TMPDIR_ENV = "MAILGW_TEST_PG_TMPDIR"

_SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")


class ClusterError(Exception):
    """The throwaway cluster could not be created or started."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def find_bindir() -> str | None:
    """The folder holding initdb and pg_ctl, or C{None} when there is none.

    Debian puts the server programs in /usr/lib/postgresql/<version>/bin
    without PATH symlinks, so that is searched as well as pg_config and PATH.
    """
    candidates = []
    if os.environ.get(BINDIR_ENV):
        candidates.append(os.environ[BINDIR_ENV])
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True,
                                 text=True, timeout=10, check=True).stdout.strip()
            candidates.append(out)
        except (OSError, subprocess.SubprocessError):
            pass
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: _version_key(p.split("/")[-2]), reverse=True)
    candidates += versions
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(os.path.realpath(initdb)))
    for folder in candidates:
        if all(os.access(os.path.join(folder, p), os.X_OK) for p in _SERVER_PROGRAMS):
            return folder
    return None


def _version_key(text: str):
    return tuple(int(p) if p.isdigit() else 0 for p in text.split("."))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One throwaway cluster in its own temporary directory.

    L{destroy} (also under the name C{stop}) is idempotent and safe to call from
    a C{finally} or a signal handler's aftermath.
    """

    def __init__(self, tmpdir: str | None = None, bindir: str | None = None,
                 root: str | None = None, durable: bool = False):
        """
        @param durable: fsync, synchronous commits and full page writes on,
            as a production server runs (the bench); else off, for speed.
        """
        self.durable = durable
        self.bindir = bindir or find_bindir()
        if self.bindir is None:
            raise ClusterError("PostgreSQL server programs (initdb, pg_ctl) not found; "
                               "install them with: apt-get install -y postgresql")
        self._as_postgres = os.geteuid() == 0
        tmpdir = tmpdir or os.environ.get(TMPDIR_ENV) or None
        self.root = root or tempfile.mkdtemp(prefix="mailgw-pg-", dir=tmpdir)
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "postgres.log")
        self.port = None
        self._destroyed = False
        self._lock = threading.Lock()
        if self._as_postgres and root is None:
            try:
                shutil.chown(self.root, "postgres", "postgres")
            except (LookupError, OSError) as e:
                shutil.rmtree(self.root, ignore_errors=True)
                raise ClusterError(f"running as root needs a 'postgres' user: {e}") from e

    # -- URLs ------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Superuser URL of the C{postgres} database over TCP."""
        return self.database_url("postgres")

    def database_url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def socket_url(self, dbname: str = "postgres") -> str:
        """The same database over the Unix socket (libpq's C{host=} form)."""
        return (f"postgresql:///{dbname}?host={quote(self.root, safe='/')}"
                f"&port={self.port}&user=postgres")

    # -- life cycle ----------------------------------------------------------------

    def _run(self, program, *args, timeout=120):
        cmd = [os.path.join(self.bindir, program), *args]
        kwargs = {}
        if self._as_postgres:
            kwargs = {"user": "postgres", "group": "postgres", "extra_groups": []}
        env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
        env.pop("PGDATA", None)
        proc = subprocess.run(cmd, cwd=self.root, env=env, capture_output=True,
                              text=True, timeout=timeout, **kwargs)
        return proc

    def init(self):
        """initdb; ICU en-US collation where the server supports it, so that
        tests see the ordering a typical production database has, not C's."""
        base = ["-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                "--no-sync", "--no-instructions"]
        attempts = [
            base + ["--locale-provider=icu", "--icu-locale=en-US", "--locale=C.UTF-8"],
            base + ["--locale=C.UTF-8"],
            base + ["--no-locale"],
        ]
        errors = []
        for args in attempts:
            proc = self._run("initdb", *args)
            if proc.returncode == 0:
                return
            errors.append(proc.stderr.strip())
            shutil.rmtree(self.data, ignore_errors=True)
        raise ClusterError("initdb failed:\n" + "\n---\n".join(errors))

    def start_server(self):
        """Start the server (on the same port after the first start)."""
        first = self.port is None
        for _ in range(3 if first else 1):
            if first:
                self.port = free_port()
            options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                       "-c max_connections=200")
            if not self.durable:
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            proc = self._run("pg_ctl", "-D", self.data, "-o", options, "-l", self.log,
                             "-w", "-t", "60", "start")
            if proc.returncode == 0:
                return
        raise ClusterError(f"pg_ctl start failed: {proc.stdout}{proc.stderr}\n"
                           f"{self.log_tail()}")

    def stop_server(self, mode: str = "fast"):
        """Stop the server, keeping its data; a no-op when it is not running."""
        if not self.running():
            return
        proc = self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")
        if proc.returncode != 0 and self.running():
            raise ClusterError(f"pg_ctl stop failed: {proc.stdout}{proc.stderr}")

    def running(self) -> bool:
        if not os.path.exists(os.path.join(self.data, "postmaster.pid")):
            return False
        return self._run("pg_ctl", "-D", self.data, "status").returncode == 0

    def restart_server(self):
        self.stop_server()
        self.start_server()

    def destroy(self):
        """Stop the server and delete the directory. Idempotent."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
        try:
            if os.path.isdir(self.data):
                self.stop_server(mode="immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    stop = destroy

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


def run_directory() -> str:
    """A folder for the run's clusters (the postgres user may pass through)."""
    folder = tempfile.mkdtemp(prefix="mailgw-test-pg-")
    os.chmod(folder, 0o711)
    return folder


def destroy_all(folder: str):
    """Stop every cluster made under C{folder}, then delete it."""
    try:
        for name in os.listdir(folder):
            root = os.path.join(folder, name)
            if os.path.isdir(os.path.join(root, "data")):
                try:
                    Cluster(root=root).destroy()
                except ClusterError:
                    pass
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def start_cluster(tmpdir: str | None = None) -> Cluster:
    """A new, running cluster. The caller must call C{destroy()}."""
    cluster = Cluster(tmpdir)
    try:
        cluster.init()
        cluster.start_server()
    except BaseException:
        cluster.destroy()
        raise
    return cluster


def start(tmpdir: str | None = None):
    """C{(url, stop)}: a running cluster's superuser URL and its idempotent
    teardown. The cluster lives in a new directory under C{tmpdir}."""
    cluster = start_cluster(tmpdir)
    return cluster.url, cluster.destroy


# -- databases on a running server -------------------------------------------------

def with_database(url: str, dbname: str) -> str:
    """C{url} pointing at database C{dbname} instead (other parts unchanged)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def admin_url() -> str | None:
    """The run's superuser URL from the environment, or C{None}."""
    return os.environ.get(ADMIN_ENV) or os.environ.get(URL_ENV) or None


def _admin_execute(admin: str, sql: str):
    import psycopg2
    conn = psycopg2.connect(admin, connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def fresh_database(admin: str | None = None):
    """Create an empty database C{t_<random>}; C{(url, drop)}.

    C{drop} is idempotent and forces out any session still connected.
    """
    admin = admin or admin_url()
    if not admin:
        raise ClusterError(f"{ADMIN_ENV} is not set")
    name = "t_" + secrets.token_hex(6)
    _admin_execute(admin, f'CREATE DATABASE "{name}"')
    dropped = []

    def drop():
        if dropped:
            return
        dropped.append(True)
        _admin_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return with_database(admin, name), drop
