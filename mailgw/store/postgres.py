"""The PostgreSQL engine: txpostgres' asynchronous psycopg2 connections.

No threads: each statement of a store generator is one C{cursor.execute}
Deferred. A read runs inside one transaction (C{BEGIN READ ONLY}) on a pooled
connection. Writes queue up and are committed in batches on one more
connection, the writer, each in a savepoint of its own (group commit, see
L{mailgw.store.pgbatch}): one COMMIT, one WAL flush, for every write that
arrived while the previous batch ran. A batch that is one message (the
messages queued meanwhile, and credentials' last use) goes on a session of
its own instead, the pipeline session (L{mailgw.store.pgpipe}: libpq through
psycopg 3, bodies as binary parameters, which psycopg2 cannot send); it is
the writer's second half, and while it is away such batches go on the writer
as text. The pool is txpostgres' C{ConnectionPool} taught three things it
lacks, and the writer has them too (a batch is run as one transaction is):

  - a dead connection (server restart, network loss, a timed-out call) is
    replaced by a new one on its next use, so the store recovers by itself;
    a connection found dead at a call's first round trip (its C{BEGIN}) is
    replaced and the call tried once more, since nothing of it ran;
  - every call has a deadline, C{timeout} seconds after it was made (the
    gateway's C{database.store_timeout}), time spent waiting for a free
    connection (a write: for its batch) included: a call still waiting then
    is dropped; otherwise (a batch: at its oldest write's deadline)
    the statement in flight is cancelled (C{conn.cancel}, a cancel request
    to the server), and if the server does not answer that either, the
    connection is closed. Either way the call fails with L{StoreUnavailable}
    instead of hanging;
  - a lost connection is not logged as an unhandled error: an idle one is
    closed quietly, and a failed ROLLBACK on a dead connection is moot (the
    server rolls back a session that ends).

The URL is handed to libpq as is (C{postgresql://user:pass@host:port/db?...},
C{postgresql:///db?host=/run/postgresql}), so every libpq parameter works.

The body file of C{enqueue} is read on the reactor thread, chunk by chunk
between statements: fine for a spooled local file.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import defer, error as ierror, task
from twisted.python import failure, log
from txpostgres import txpostgres
from txpostgres.psycopg2_impl import psycopg2

import psycopg

from mailgw.interfaces import Conflict, StoreUnavailable
from mailgw.store.base import Q, Store, _touch_credential, schema_files, split_statements
from mailgw.store.pgbatch import GroupCommit, TimedOut, rows_of, statement_text
from mailgw.store.pgenqueue import ENQUEUE_TOGETHER, enqueue_at_once
from mailgw.store.pgpipe import PipelineError, PipelineSession
from mailgw.store.webhooks import WebhookOperations

#: seconds a call may take before it fails with StoreUnavailable, when the
#: caller does not say (the gateway passes C{database.store_timeout})
DEFAULT_TIMEOUT = 5.0
#: an upgrade may wait for another node's upgrade, and may rewrite tables
UPGRADE_TIMEOUT = 600.0
#: seconds the server has to honour a cancel request before we hang up
CANCEL_GRACE = 2.0
#: pg_advisory_xact_lock key serialising schema upgrades across nodes
SCHEMA_LOCK = 0x6D61696C67770001  # "mailgw" 0001

_DISCONNECTS = (ierror.ConnectionDone, ierror.ConnectionLost, defer.CancelledError,
                txpostgres.RollbackFailed, txpostgres.AlreadyPolling,
                txpostgres.UnexpectedPollResult, txpostgres.AlreadyConnected)


class _Transaction:
    """One run of a store generator, statement by statement, on one cursor.

    C{current} is the statement in flight (BEGIN and COMMIT included): what a
    deadline cancels. After the deadline (C{deadline}, in the reactor's
    seconds) no further statement is sent.
    """

    def __init__(self, fn, args, begin: str, timeout: float, deadline: float):
        self.fn, self.args, self.begin, self.timeout = fn, args, begin, timeout
        self.deadline = deadline
        self.waiting = True  # for a free connection
        self.current = None
        self.started = False  # BEGIN succeeded and the generator began
        self.expired = False

    def execute(self, cursor, sql, params=None):
        self.current = cursor.execute(sql, params)
        return self.current

    def commit_statement(self) -> str:
        return "COMMIT"

    def __call__(self, cursor):
        self.started = True
        done = defer.Deferred()
        self._advance(cursor, self.fn(*self.args), done, None)
        return done

    def _advance(self, cursor, gen, done, rows):
        if self.expired:
            gen.close()
            done.errback(TimedOut())
            return
        try:
            statement = gen.send(rows)
        except StopIteration as stop:
            done.callback(stop.value)
            return
        except BaseException:
            done.errback()
            return
        sql, params = statement_text(statement)
        d = self.execute(cursor, sql, params)
        d.addCallbacks(lambda c: self._advance(cursor, gen, done, rows_of(c)),
                       lambda f: (gen.close(), done.errback(f)))


class _Connection(txpostgres.Connection):
    """A pooled connection that can tell it is dead and dies quietly."""

    _ready = False
    #: statements run once per session as it connects, each allowed to fail
    #: (a setting this server lacks is done without)
    session_settings = ()

    def alive(self) -> bool:
        conn = self._connection
        return (self._ready and conn is not None and not conn.closed
                and conn.get_transaction_status()
                != psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN)

    def idle(self) -> bool:
        """Alive and outside any transaction block: a message sent now runs
        as a transaction of its own."""
        return self.alive() and (self._connection.get_transaction_status()
                                 == psycopg2.extensions.TRANSACTION_STATUS_IDLE)

    def connect(self, *args, **kwargs):
        self._ready = False
        d = super().connect(*args, **kwargs)

        def ready(result):
            self._ready = True
            return result
        d.addCallback(ready)
        for sql in self.session_settings:
            d.addCallback(self._apply, sql)
        return d

    def _apply(self, result, sql):
        def refused(reason):
            reason.trap(psycopg2.Error)
            log.msg(f"postgresql: going on without {sql!r}: {_first_line(reason.value)}")
            return result
        return self.runOperation(sql).addCallbacks(lambda _: result, refused)

    def close(self):
        self._ready = False
        if self._connection is not None:
            super().close()

    def doRead(self):
        # An idle connection reads only NOTIFYs and the server's goodbye; let
        # the goodbye close it instead of escaping to the reactor's log.
        try:
            txpostgres.Connection.doRead(self)
        except (psycopg2.Error, txpostgres.UnexpectedPollResult) as e:
            log.msg(f"postgresql: idle connection lost: {_first_line(e)}")
            self.close()

    def _runInteraction(self, txn, *args, **kwargs):
        cursor = self.cursor()
        # a batch (pgbatch.Batch) sends its BEGIN along with its first statement
        d = txn.execute(cursor, txn.begin) if txn.begin else defer.succeed(cursor)
        d.addCallback(txn, *args, **kwargs)

        def commit(result):
            statement = txn.commit_statement()
            if statement is None:  # committed already (pgbatch.Batch._alone)
                return result
            return txn.execute(cursor, statement).addCallback(lambda _: result)

        def rollback(reason):
            if not self.alive():
                return reason  # the server rolls back a session that ended
            d = txn.execute(cursor, "ROLLBACK")

            def failed(_):
                self.close()  # unknown state: a new session replaces it
                return reason
            return d.addCallbacks(lambda _: reason, failed)
        return d.addCallback(commit).addErrback(rollback)


class _Writer(_Connection):
    """The connection every batch of writes runs on."""

    # Message bodies are stored compressed (TOAST): lz4 takes a fraction of
    # the server's CPU that the default, pglz, takes for a body (PostgreSQL
    # documentation, default_toast_compression: version 14 on, when built
    # with lz4). Only the writer stores bodies; values keep the method they
    # were stored with, so every session reads both.
    session_settings = ("SET default_toast_compression = lz4",)


class _Pool(txpostgres.ConnectionPool):
    """txpostgres' pool with reconnection, deadlines and a closed state, and
    beside it the writer: the one connection every batch of writes runs on."""

    connectionFactory = _Connection

    def __init__(self, dsn: str, reactor, size: int, timeout: float = DEFAULT_TIMEOUT):
        """
        @param size: connections for reads; the writer's two sessions are
            two more.
        @param timeout: seconds a reconnection of the pipeline session may
            take.
        """
        self.reactor = reactor
        self.timeout = timeout
        self._pipeline_tried_at = float("-inf")
        self._pipeline_failing = False
        super().__init__(None, dsn, min=size)
        self.writer = _Writer(self.reactor, self.cooperator)
        self.writer_answered_at = float("-inf")
        #: the batches that are one message go here, bodies in binary
        self.pipeline = PipelineSession(self.reactor, _Writer.session_settings)
        self.every = [*self.connections, self.writer, self.pipeline]
        self.target = redact(dsn)
        self.closed = False

    def ensure(self, conn, timeout):
        """Deferred firing when C{conn} is connected (reconnecting it if needed)."""
        if conn.alive():
            return defer.succeed(None)
        conn.close()
        d = conn.connect(*self.connargs, **self.connkw)
        timed_out = []

        def expire():
            timed_out.append(True)
            conn.close()  # fails the pending connect with ConnectionDone
        timer = self.reactor.callLater(timeout, expire)

        def finish(result):
            if timer.active():
                timer.cancel()
            if timed_out:
                raise StoreUnavailable(f"postgresql: no connection to {self.target} "
                                       f"within {timeout:g} s")
            if isinstance(result, failure.Failure) and result.check(psycopg2.Error,
                                                                    psycopg.Error):
                raise StoreUnavailable(f"postgresql: cannot connect to {self.target}: "
                                       f"{_first_line(result.value)}")
            return result
        return d.addBoth(finish)

    def start(self, timeout):
        """Connect every session; fails when one of psycopg2's cannot. The
        pipeline session connects last, and the pool goes on without it (as
        text, on the writer) should it fail."""
        d = defer.gatherResults([self.ensure(c, timeout) for c in self.every
                                 if c is not self.pipeline], consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure if f.check(defer.FirstError) else f)
        d.addCallback(lambda _: self._connect_pipeline(timeout))
        return d.addCallback(lambda _: self)

    def _connect_pipeline(self, timeout):
        """(Re)connect the pipeline session; says so in the log when that
        fails for the first time and when it works again."""
        if self.closed:
            return defer.succeed(None)
        self._pipeline_tried_at = self.reactor.seconds()
        d = self.ensure(self.pipeline, timeout)

        def connected(_):
            if self._pipeline_failing:
                self._pipeline_failing = False
                log.msg("postgresql: pipeline session connected again")

        def failed(reason):
            self.pipeline.close()
            if not self._pipeline_failing:
                self._pipeline_failing = True
                why = _first_line(reason.value).removeprefix("postgresql: ")
                log.msg(f"postgresql: pipeline session: {why}; messages go on the writer "
                        f"as text meanwhile")
        return d.addCallbacks(connected, failed)

    def close(self):
        self.closed = True
        for conn in self.every:
            conn.close()

    def _runInteraction(self, txn, *args, **kwargs):
        if self.closed:
            return defer.fail(StoreUnavailable("the store is closed"))
        txn.waiting = False
        conn = self.connections.pop()
        d = self._attempt(conn, txn, retry=True)
        return d.addBoth(self._putBackAndPassthrough, conn)

    #: seconds after a session's last answer during which a batch may
    #: commit on it as one message alone (L{mailgw.store.pgbatch.Batch._alone}):
    #: such a batch cannot be tried again, so a session idle longer, which may
    #: have died unnoticed, runs its next batch the way that can
    WARM = 5.0

    def run_batch(self, batch):
        """Run a L{mailgw.store.pgbatch.Batch} on the writer, one at a time
        (the caller waits for each); the writer is reconnected first when it
        died, and the batch tried once more when the writer is found dead at
        its first round trip, as a pooled call is. A pipeline session that
        answered lately goes with it, for a batch that is one message."""
        if self.closed:
            return defer.fail(StoreUnavailable("the store is closed"))
        now = self.reactor.seconds()
        pipeline = self.pipeline
        if pipeline.idle() and now - pipeline.answered_at < self.WARM:
            batch.pipeline = pipeline
        else:
            batch.pipeline = None
            self._refresh_pipeline()
        batch.may_commit_alone = (self.writer.idle()
                                  and now - self.writer_answered_at < self.WARM)
        d = self._attempt(self.writer, batch, retry=True)
        d.addCallback(self._writer_answered, batch)
        return d

    def _refresh_pipeline(self):
        """Make the pipeline session ready for a later batch: have it answer
        once when it was idle too long (within the store timeout), or
        reconnect it when it died, at most once per L{WARM} seconds (on the
        reactor's next turn: never inside one of the session's own
        callbacks)."""
        pipeline = self.pipeline
        if self.closed or pipeline.busy():
            return
        if not pipeline.alive():
            if self.reactor.seconds() - self._pipeline_tried_at >= self.WARM:
                self._pipeline_tried_at = self.reactor.seconds()
                self.reactor.callLater(0, self._connect_pipeline, self.timeout)
            return
        d = pipeline.run([("SELECT 1", ())])
        timer = self.reactor.callLater(self.timeout, d.cancel)

        def answered(result):
            if timer.active():
                timer.cancel()
            if isinstance(result, failure.Failure):
                pipeline.close()
        d.addBoth(answered)

    def _writer_answered(self, result, batch):
        if batch.on_writer:
            self.writer_answered_at = self.reactor.seconds()
        return result

    def _attempt(self, conn, txn, retry):
        reused = conn.alive()
        d = self.ensure(conn, self._left(txn))
        d.addCallback(lambda _: self._timed(conn, txn))
        if not (retry and reused):
            return d

        def stale(reason):
            # A connection that died while idle (its BEGIN failed, nothing
            # ran): reconnect and try once more.
            if txn.started or txn.expired or conn.alive() or self.closed:
                return reason
            if not reason.check(psycopg2.OperationalError, psycopg2.InterfaceError):
                return reason
            txn.current = None
            return self._attempt(conn, txn, retry=False)
        return d.addErrback(stale)

    def _timed(self, conn, txn):
        d = conn.runInteraction(txn)
        grace = []

        def expire():
            txn.expired = True
            current = txn.current
            if current is not None and not current.called:
                try:
                    conn.cancel(current)
                    grace.append(self.reactor.callLater(CANCEL_GRACE, conn.close))
                    return
                except Exception as e:  # the cancel request could not be sent
                    log.msg(f"postgresql: cancel failed: {_first_line(e)}")
            conn.close()
        timer = self.reactor.callLater(self._left(txn), expire)

        def finish(result):
            for call in [timer, *grace]:
                if call.active():
                    call.cancel()
            return result
        return d.addBoth(finish)

    def _left(self, txn) -> float:
        """Seconds left until C{txn}'s deadline (0 when it has passed)."""
        return max(0.0, txn.deadline - self.reactor.seconds())


def _first_line(e) -> str:
    """An error's primary message: psycopg2's DETAIL lines may quote row
    values (a credential key), which must stay out of errors and logs."""
    primary = None
    if getattr(e, "pgcode", None):  # reported by the server
        primary = e.diag.message_primary
    text = primary or str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _translate(reason, txn):
    if reason.check(psycopg2.IntegrityError) and not txn.expired:
        raise Conflict(_first_line(reason.value))
    if reason.check(TimedOut) or (txn.expired and reason.check(
            psycopg2.Error, psycopg.Error, PipelineError, *_DISCONNECTS)):
        raise StoreUnavailable(f"postgresql: no answer within {txn.timeout:g} s")
    if reason.check(psycopg2.Error, psycopg.Error, PipelineError, *_DISCONNECTS):
        raise StoreUnavailable(f"postgresql: {_first_line(reason.value)}")
    return reason


def _translated(reason, txn):
    """L{_translate}, as a value: the store's own failure for C{reason}."""
    try:
        _translate(reason, txn)
    except Exception:
        return failure.Failure()
    return reason


def _give_up_waiting(txn, d) -> None:
    if txn.waiting:
        txn.expired = True
        d.cancel()  # fails d with CancelledError, which _translate words


def redact(url: str) -> str:
    """C{url} with any password replaced by C{***}."""
    url = re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://?"
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


class PostgresStore(WebhookOperations, Store):
    """The store on PostgreSQL: reads over a pool of asynchronous
    connections, writes committed in batches on one more (group commit)."""

    engine = "postgresql"

    def __init__(self, url: str, reactor, pool_size: int = 4,
                 timeout: float = DEFAULT_TIMEOUT):
        """
        @param url: a libpq connection URL, handed over as is.
        @param pool_size: connections to the server: the writer's two
            sessions (L{_Writer} and L{PipelineSession}), and the rest (at
            least one) for reads.
        @param timeout: seconds a call (or a connection attempt) may take: at
            that deadline the statement in flight is cancelled and the call
            fails with L{StoreUnavailable} (an upgrade gets at least
            L{UPGRADE_TIMEOUT}).
        """
        super().__init__(reactor)
        self.url = url
        self._reactor = reactor
        self._pool_size = pool_size
        self._timeout = timeout
        self._pool = None
        self._writes = None

    def __repr__(self):
        return f"<PostgresStore {redact(self.url)}>"

    def start(self):
        """Connect the whole pool; fails with StoreUnavailable (and leaves
        nothing open) when the server cannot be reached."""
        self._pool = _Pool(self.url, self._reactor, max(1, self._pool_size - 2),
                           self._timeout)
        self._writes = GroupCommit(self._reactor, self._timeout, self._pool.run_batch,
                                   _translated, {enqueue_at_once: ENQUEUE_TOGETHER},
                                   blind=frozenset({_touch_credential}))
        d = self._pool.start(self._timeout)

        def failed(reason):
            self._pool.close()
            self._writes.close()
            self._pool = self._writes = None
            if reason.check(StoreUnavailable):
                return reason
            raise StoreUnavailable(f"postgresql: {_first_line(reason.value)}")
        return d.addCallbacks(lambda _: None, failed)

    def close(self):
        if self._writes is not None:
            self._writes.close()
            self._writes = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        # let the polling callbacks already scheduled by the closed
        # connections run, so nothing of ours is left in the reactor
        return task.deferLater(self._reactor, 0, lambda: None)

    def _interact(self, begin, fn, args, timeout=None):
        if self._pool is None:
            return defer.fail(StoreUnavailable("the store is closed"))
        timeout = timeout or self._timeout
        txn = _Transaction(fn, args, begin, timeout, self._reactor.seconds() + timeout)
        d = self._pool.runInteraction(txn)
        # A call still waiting for a free connection at its deadline gives up
        # (cancelling the wait): the deadline is the caller's, not the pool's.
        queued = self._reactor.callLater(timeout, _give_up_waiting, txn, d)

        def done(result):
            if queued.active():
                queued.cancel()
            return result
        return d.addBoth(done).addErrback(_translate, txn)

    def _run(self, fn, *args):
        """A write: queued, and committed with the writes queued alongside it
        (L{GroupCommit}); its Deferred fires only after that commit."""
        if self._writes is None:
            return defer.fail(StoreUnavailable("the store is closed"))
        return self._writes.submit(fn, args)

    def _read(self, fn, *args):
        return self._interact("BEGIN READ ONLY", fn, args)

    def enqueue(self, envelope, body):
        return self._run(enqueue_at_once, envelope, body, self._now())

    def upgrade(self):
        # a transaction of its own on the pool: it may wait for another
        # node's upgrade far longer than a write may wait in a batch
        d = self._interact("BEGIN", _upgrade, (), timeout=max(self._timeout, UPGRADE_TIMEOUT))
        d.addCallback(self._after_upgrade)
        return d


def _upgrade():
    # The lock makes a second node wait, then see the versions the first one
    # committed (each READ COMMITTED statement takes a new snapshot).
    yield Q("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
    yield Q("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
            "applied_at DOUBLE PRECISION NOT NULL DEFAULT extract(epoch from now()))", None)
    # every shipped version not applied yet, in order: one added by a later
    # change below a version applied already (work merged out of order) too
    rows = yield Q("SELECT version FROM schema_version")
    done = {r[0] for r in rows}
    applied = []
    for version, sql in schema_files("postgresql"):
        if version in done:
            continue
        for statement in split_statements(sql):
            yield Q(statement, None)
        yield Q("INSERT INTO schema_version (version) VALUES (?)", (version,))
        applied.append(version)
    return applied
