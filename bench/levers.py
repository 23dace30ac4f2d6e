"""What-if experiments: mailgw with a performance lever applied by patching
it at start-up, so that a lever's gain can be measured before anyone builds it
properly in mailgw/ (``python -m bench.run --variants "group+onehop"``).

These are prototypes and upper bounds for measurement only. Some change
semantics on purpose (C{nosync} is not durable, C{cachereads} lets a change
wait up to a second); none of this is ever loaded by the real gateway.

  nolog       the per-connection and per-message info lines are not written
  nosync      PRAGMA synchronous=NORMAL: what the fsync costs (NOT durable)
  notouch     a credential's last_used_at is written at most once a minute
  onehop      the end-of-DATA reads (credential, server, domains, send limit)
              and the enqueue run as one transaction on the writer thread,
              instead of three or four thread round trips
  group       group commit: write transactions that arrive while one is being
              committed are run together in one transaction (a SAVEPOINT each,
              so one failing does not fail the others) and one fsync; each
              caller is answered only after that commit
  cachereads  directory reads are cached for one second (bounds what the
              read round trips cost; NOT the wire contract's freshness)

Run as ``python -c "import bench.levers as l; l.main()" LEVERS twistd-args...``.
"""
from __future__ import annotations

import sys

LEVERS = {}


def lever(name):
    def register(fn):
        LEVERS[name] = fn
        return fn
    return register


@lever("nolog")
def _no_log():
    from mailgw.smtp import protocol
    protocol.SubmissionProtocol._log = lambda self, fmt, **kw: None


@lever("nosync")
def _no_sync():
    from mailgw.store import sqlite
    configure = sqlite._configure

    def normal(connection):
        configure(connection)
        connection.execute("PRAGMA synchronous = NORMAL")
    sqlite._configure = normal


@lever("notouch")
def _no_touch():
    from twisted.internet import defer

    from mailgw.store import base
    touch = base.Store.touch_credential
    written = {}

    def seldom(self, credential_id, when):
        if when - written.get(credential_id, float("-inf")) < 60:
            return defer.succeed(None)
        written[credential_id] = when
        return touch(self, credential_id, when)
    base.Store.touch_credential = seldom


@lever("onehop")
def _one_hop():
    from mailgw.model import MessageEnvelope
    from mailgw.smtp import delivery, replies
    from mailgw.smtp.message import sender_domain
    from mailgw.store import base

    def submit(credential_id, token, mail_from, recipients, header_block, body, protocol,
               now):
        found = yield from base._credential_by_id(credential_id)
        if found is None:
            raise replies.AUTH_REQUIRED
        credential, server = found
        if server.is_suspended:
            raise replies.SERVER_SUSPENDED
        names, any_domain = yield from base._authorised_domains(server.id)
        domain = sender_domain(header_block, server, names, any_domain)
        hold = None
        if credential.hold:
            hold = "credential on hold"
        elif server.mode == "development":
            hold = "server in development mode"
        elif server.send_limit is not None:
            count = yield from base._messages_since(
                server.id, now - delivery.SEND_LIMIT_WINDOW)
            if count >= server.send_limit:
                hold = "send limit reached"
        envelope = MessageEnvelope(
            token=token, server_id=server.id, credential_id=credential.id,
            mail_from=mail_from, rcpt_to=tuple(recipients), sender_domain=domain,
            protocol=protocol, status="held" if hold else "queued", hold_reason=hold)
        return (yield from base._enqueue(envelope, body, now))

    def commit_message(store, clock, *, credential_id, token, mail_from, recipients,
                       header_block, body, protocol):
        return store._run(submit, credential_id, token, mail_from, recipients,
                          header_block, body, protocol, clock.seconds())
    delivery.commit_message = commit_message


@lever("group")
def _group_commit():
    from twisted.internet import defer
    from twisted.python.failure import Failure

    from mailgw.store import sqlite

    def steps(cursor, fn, args):
        gen = fn(*args)
        try:
            statement = next(gen)
            while True:
                cursor.execute(statement.sql, statement.params)
                rows = cursor.fetchall() if cursor.description else []
                statement = gen.send(rows)
        except StopIteration as stop:
            return stop.value

    def batch_interaction(cursor, batch):
        cursor.execute("BEGIN IMMEDIATE")
        outcomes = []
        for fn, args, _ in batch:
            cursor.execute("SAVEPOINT one")
            try:
                value = steps(cursor, fn, args)
            except Exception as e:  # this caller only; the others go on
                cursor.execute("ROLLBACK TO one")
                cursor.execute("RELEASE one")
                outcomes.append((False, e))
            else:
                cursor.execute("RELEASE one")
                outcomes.append((True, value))
        return outcomes  # adbapi commits after this returns

    def translated(error):
        try:
            sqlite._translate(Failure(error))
        except Exception as e:
            return Failure(e)
        return Failure(error)

    class Batcher:
        def __init__(self, store):
            self.store = store
            self.pending = []
            self.busy = False

        def run(self, fn, args):
            d = defer.Deferred()
            self.pending.append((fn, args, d))
            if not self.busy:
                self.flush()
            return d

        def flush(self):
            batch, self.pending = self.pending, []
            self.busy = True
            pool = self.store._writer
            if pool is None:
                return self.finished(Failure(sqlite.StoreUnavailable("the store is closed")),
                                     batch)
            d = pool.runInteraction(batch_interaction, batch)
            d.addBoth(self.finished, batch)

        def finished(self, outcomes, batch):
            self.busy = False
            if isinstance(outcomes, Failure):
                whole = translated(outcomes.value)
                for _, _, d in batch:
                    d.errback(whole)
            else:
                for (ok, value), (_, _, d) in zip(outcomes, batch):
                    if ok:
                        d.callback(value)
                    else:
                        d.errback(translated(value))
            if self.pending:
                self.flush()

    def run(self, fn, *args):
        batcher = self.__dict__.get("_batcher")
        if batcher is None:
            batcher = self._batcher = Batcher(self)
        return batcher.run(fn, args)
    sqlite.SQLiteStore._run = run


@lever("cachereads")
def _cache_reads():
    from mailgw.store import base
    for name in ("credential_by_key", "credential_by_id", "server_by_id",
                 "authorised_domains"):
        _cache(base.Store, name)


def _cache(cls, name):
    from twisted.internet import defer
    original = getattr(cls, name)

    def cached(self, *args):
        memo = self.__dict__.setdefault("_bench_cache", {})
        now = self._now()
        hit = memo.get((name, args))
        if hit is not None and now - hit[0] < 1.0:
            return defer.succeed(hit[1])
        d = original(self, *args)

        def keep(value):
            memo[(name, args)] = (now, value)
            return value
        return d.addCallback(keep)
    setattr(cls, name, cached)


def apply(names: str) -> list[str]:
    chosen = [n for n in names.split("+") if n and n != "base"]
    for name in chosen:
        if name not in LEVERS:
            raise SystemExit(f"bench.levers: unknown lever {name!r} (know {sorted(LEVERS)})")
        LEVERS[name]()
    return chosen


def main() -> None:
    """argv: LEVERS then twistd's own arguments."""
    names = sys.argv[1]
    del sys.argv[1]
    apply(names)
    from twisted.scripts.twistd import run
    run()


if __name__ == "__main__":
    main()
