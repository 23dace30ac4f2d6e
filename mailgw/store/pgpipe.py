"""A PostgreSQL session for the hot write: statements sent in one pipeline,
message bodies as binary parameters.

psycopg2, which the rest of the engine uses, sends every statement as text,
its parameters quoted into it: a 10 kB body becomes 20 kB of hex the server
must lex and decode, and for a batch of messages that text is most of the
server's time (docs/deployment.md, "PostgreSQL"). This session speaks the
extended query protocol through libpq (psycopg 3's C{psycopg.pq} binding):
a statement's parameters travel apart from its text, bodies in binary.

A call (L{PipelineSession.run}) is several statements sent in one pipeline,
followed by one Sync (PostgreSQL documentation, Frontend/Backend Protocol,
"Pipelining"). Outside a transaction block, the statements up to a Sync run
as one implicit transaction, committed before the Sync is answered: one round
trip, one commit. An error rolls all of them back, and the server skips the
rest up to the Sync.

No threads: the session's socket is watched by the reactor, as txpostgres
does for psycopg2's asynchronous connections, and libpq runs non-blocking.
"""
from __future__ import annotations

import itertools
import os

from twisted.internet import defer, error as ierror
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.python import failure, log
from zope.interface import implementer

from psycopg import OperationalError, pq
from psycopg.conninfo import make_conninfo
from psycopg.adapt import PyFormat, Transformer

from mailgw.store.base import split_placeholders

_ExecStatus = pq.ExecStatus
_OK = (_ExecStatus.TUPLES_OK, _ExecStatus.COMMAND_OK, _ExecStatus.EMPTY_QUERY)


class PipelineError(Exception):
    """A statement of a pipeline was refused; the message is the server's
    primary message only (its DETAIL may quote row values)."""

    def __init__(self, message: str, sqlstate: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate


def to_numbered(sql: str) -> str:
    """C{?} placeholders to the protocol's C{$1}, C{$2}, ...

    Quoted literals, quoted identifiers and comments keep their C{?}."""
    pieces = split_placeholders(sql)
    return pieces[0] + "".join(f"${n}{piece}" for n, piece in enumerate(pieces[1:], 1))


def _format(value) -> PyFormat:
    """Binary for bytes and lists of bytes (a body needs no quoting that
    way), text for the rest, which the statements cast where needed."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return PyFormat.BINARY
    if isinstance(value, list) and any(isinstance(v, (bytes, bytearray, memoryview))
                                       for v in value):
        return PyFormat.BINARY
    return PyFormat.TEXT


@implementer(IReadDescriptor, IWriteDescriptor)
class PipelineSession:
    """One libpq session, non-blocking, always in pipeline mode, driven by
    the reactor; one call (L{run}) at a time.

    @ivar answered_at: the reactor's time of the session's last answer.
    """

    def __init__(self, reactor, settings=()):
        """
        @param settings: statements run once as the session connects, each
            allowed to fail (logged).
        """
        self.reactor = reactor
        self.settings = settings
        self.answered_at = float("-inf")
        self._pgconn = None
        self._fd = self._source = -1  # the reactor's descriptor, libpq's
        self._inode = None
        self._reading = self._writing = False
        self._connecting = None  # the connect Deferred, while it runs
        self._call = None  # [Deferred, statements it prepared, rows, error]
        self._prepared = {}  # sql: the name it is prepared under in this session
        self._names = itertools.count(1)

    # -- state ---------------------------------------------------------------

    def alive(self) -> bool:
        """Connected, and libpq has not seen the session end."""
        return (self._pgconn is not None and self._connecting is None
                and self._pgconn.status == pq.ConnStatus.OK)

    def idle(self) -> bool:
        """Alive, no call in flight, outside any transaction block."""
        return (self.alive() and self._call is None
                and self._pgconn.transaction_status == pq.TransactionStatus.IDLE)

    def busy(self) -> bool:
        """Connecting, or a call in flight."""
        return self._connecting is not None or self._call is not None

    # -- connecting ----------------------------------------------------------

    def connect(self, dsn: str) -> defer.Deferred:
        """Connect (libpq's non-blocking connect), then run the settings.

        @param dsn: a libpq connection string or URL.
        """
        self.close()
        d = self._connecting = defer.Deferred()
        try:
            # text goes both ways as UTF-8, whatever the URL or the
            # environment says (the Transformer has no session to ask)
            conninfo = make_conninfo(dsn, client_encoding="UTF8")
            pgconn = pq.PGconn.connect_start(conninfo.encode())
        except Exception:
            self._connecting = None
            return defer.fail()
        self._pgconn = pgconn
        # libpq would print the server's notices on standard error; the
        # statements sent here raise none worth an operator's attention
        pgconn.notice_handler = _ignore_notice
        if pgconn.status == pq.ConnStatus.BAD:
            self._connect_failed()
            return d
        # libpq: behave as if the last poll had said "writing"
        self._watch(read=False, write=True)
        d.addCallback(self._apply_settings)
        return d

    def _connect_step(self):
        pgconn = self._pgconn
        state = pgconn.connect_poll()
        if state == pq.PollingStatus.OK:
            try:
                pgconn.nonblocking = 1
                pgconn.enter_pipeline_mode()  # libpq 14 on
            except Exception as e:
                self._connect_failed(str(e))
                return
            self._watch(read=True, write=False)
            d, self._connecting = self._connecting, None
            d.callback(None)
        elif state == pq.PollingStatus.FAILED:
            self._connect_failed()
        else:
            self._watch(read=state == pq.PollingStatus.READING,
                        write=state == pq.PollingStatus.WRITING)

    def _connect_failed(self, why: str = ""):
        message = _first_line(why or self._pgconn.error_message) or "connection failed"
        d, self._connecting = self._connecting, None
        self.close()
        d.errback(OperationalError(message))

    def _apply_settings(self, _):
        d = defer.succeed(None)
        for sql in self.settings:
            d.addCallback(lambda _, sql=sql: self.run([(sql, ())]))
            d.addErrback(self._setting_refused, sql)
        return d.addCallback(lambda _: None)

    def _setting_refused(self, reason, sql):
        reason.trap(PipelineError)
        log.msg(f"postgresql: going on without {sql!r}: {reason.value}")

    # -- calls ---------------------------------------------------------------

    def run(self, statements) -> defer.Deferred:
        """Send C{statements} in one pipeline with one Sync.

        @param statements: C{(sql, params)} pairs, C{sql} with C{?}
            placeholders; a parameter that is bytes or a list holding bytes
            goes in binary.
        @return: a Deferred firing with the last statement's rows (tuples
            of Python values), or failing with L{PipelineError} (the first
            refusal: everything was rolled back), or with the loss of the
            session.
        """
        if not self.alive():
            return defer.fail(ierror.ConnectionDone("the session is closed"))
        if self._call is not None:
            return defer.fail(RuntimeError("a call is in flight"))
        pgconn = self._pgconn
        fresh = []  # statements prepared by this call
        try:
            for sql, params in statements:
                name = self._prepared.get(sql)
                if name is None:
                    # its parameters' types are left to the server, which
                    # takes them from the casts and the columns
                    name = self._prepared[sql] = b"mailgw_%d" % next(self._names)
                    fresh.append(sql)
                    pgconn.send_prepare(name, to_numbered(sql).encode())
                tx = Transformer()
                values = tx.dump_sequence(params, [_format(v) for v in params])
                pgconn.send_query_prepared(name, values or None, tx.formats or None)
            pgconn.pipeline_sync()
        except Exception:
            f = failure.Failure()
            self.close()  # half a pipeline sent: the session cannot be trusted
            return defer.fail(f)
        d = defer.Deferred(self._cancel)
        self._call = [d, fresh, [], None]
        self._flush()
        return d

    def _flush(self):
        try:
            more = self._pgconn.flush()
        except OperationalError:
            self._lost(failure.Failure())
            return
        self._watch(read=True, write=bool(more))

    def _collect(self):
        pgconn = self._pgconn
        ended = False  # the last result was the end of a statement's results
        while self._call is not None and not pgconn.is_busy():
            call = self._call
            result = pgconn.get_result()
            if result is None:  # the end of one statement's results
                if ended or pgconn.status != pq.ConnStatus.OK:
                    # nothing more will come (libpq lost its place in the
                    # pipeline, or the session): never a Sync to wait for
                    self._lost(failure.Failure(OperationalError(
                        _first_line(pgconn.error_message) or "pipeline out of step")))
                    return
                ended = True
                continue
            ended = False
            status = result.status
            if status == _ExecStatus.PIPELINE_SYNC:
                self._call = None
                self.answered_at = self.reactor.seconds()
                d, fresh, rows, error = call
                if error is not None:
                    # a statement prepared by the call may not be there: it is
                    # prepared again, under a new name, when next sent
                    forget = self._prepared if _stale_statements(error) else fresh
                    for sql in list(forget):
                        self._prepared.pop(sql, None)
                    d.errback(error)
                else:
                    d.callback(rows)
            elif status in _OK:
                try:
                    call[2] = _rows(result)
                except Exception:  # committed, perhaps, but not understood
                    call[3] = call[3] or failure.Failure()
            elif call[3] is None:  # the first refusal; the rest is skipped
                call[3] = _error(result)

    def _cancel(self, d):
        """A deadline: ask the server to stop, and hang up (the server rolls
        back what the pipeline has not committed)."""
        if self._pgconn is not None:
            log.msg("postgresql: pipeline session: no answer by the deadline; "
                    "statement cancelled, session closed")
            try:
                self._pgconn.get_cancel().cancel()
            except Exception as e:
                log.msg(f"postgresql: cancel failed: {_first_line(str(e))}")
        self.close()

    # -- the end -------------------------------------------------------------

    def close(self):
        """Hang up; a call or a connect in flight fails with
        C{ConnectionDone}."""
        self._hang_up()
        self._fail_pending(failure.Failure(ierror.ConnectionDone("the session was closed")))

    def _lost(self, reason):
        self._hang_up()
        state = "during a call" if self._fail_pending(reason) else "while idle"
        log.msg(f"postgresql: pipeline session lost {state}: {_first_line(str(reason.value))}")

    def _hang_up(self):
        self._unwatch()
        pgconn, self._pgconn = self._pgconn, None
        self._prepared.clear()
        if pgconn is not None:
            pgconn.finish()

    def _fail_pending(self, reason) -> bool:
        pending = False
        if self._connecting is not None:
            d, self._connecting = self._connecting, None
            d.errback(reason)
            pending = True
        if self._call is not None:
            d, self._call = self._call[0], None
            if not d.called:
                d.errback(reason)
            pending = True
        return pending

    # -- the reactor's side --------------------------------------------------

    def _watch(self, read: bool, write: bool):
        """Have the reactor watch the session's socket for C{read} and
        C{write}.

        The reactor watches a duplicate of libpq's socket, which is ours to
        close: libpq closes its own when the session fails, and a closed
        descriptor left in the reactor would be taken for whatever socket
        gets its number next. libpq may also change sockets while it
        connects (another address, another attempt)."""
        source = -1
        if self._pgconn is not None and (read or write):
            try:
                source = self._pgconn.socket
            except OperationalError:  # no socket: the session ended
                source = -1
        if source != self._source or (source >= 0 and self._connecting is not None
                                      and os.fstat(source).st_ino != self._inode):
            self._unwatch()
            if source >= 0:
                self._fd, self._source = os.dup(source), source
                self._inode = os.fstat(source).st_ino
        if self._fd < 0:
            return
        if read != self._reading:
            (self.reactor.addReader if read else self.reactor.removeReader)(self)
            self._reading = read
        if write != self._writing:
            (self.reactor.addWriter if write else self.reactor.removeWriter)(self)
            self._writing = write

    def _unwatch(self):
        if self._reading:
            self.reactor.removeReader(self)
        if self._writing:
            self.reactor.removeWriter(self)
        self._reading = self._writing = False
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = self._source = -1

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "PipelineSession"

    def doRead(self):
        # the reactor may call doWrite after a doRead that closed the session
        if self._pgconn is None:
            return
        if self._connecting is not None:
            self._connect_step()
            return
        try:
            self._pgconn.consume_input()
        except OperationalError:
            self._lost(failure.Failure())
            return
        self._collect()

    def doWrite(self):
        if self._pgconn is None:
            return
        if self._connecting is not None:
            self._connect_step()
            return
        self._flush()

    def connectionLost(self, reason):
        # the reactor has stopped watching (a hang-up it saw)
        self._reading = self._writing = False
        if self._connecting is not None:
            self._connect_step()  # libpq says why, or tries the next address
        else:
            self._lost(reason)


def _stale_statements(error) -> bool:
    """Whether C{error} says the session's prepared statements are gone or
    no longer fit (a pooler between, C{DISCARD ALL}, a table changed under
    them): every one is prepared again."""
    return getattr(error, "sqlstate", None) in ("26000", "0A000")


def _ignore_notice(result) -> None:
    pass


def _rows(result) -> list[tuple]:
    if not result.nfields:
        return []
    tx = Transformer()
    tx.set_pgresult(result)
    return tx.load_rows(0, result.ntuples, tuple)


def _error(result) -> PipelineError:
    if result.status == _ExecStatus.PIPELINE_ABORTED:
        return PipelineError("pipeline aborted")
    primary = result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY)
    sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
    text = primary.decode(errors="replace") if primary else _first_line(result.error_message)
    return PipelineError(text, sqlstate.decode() if sqlstate else None)


def _first_line(text) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = (text or "").strip()
    return text.splitlines()[0] if text else ""
