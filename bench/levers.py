"""What-if experiments: mailgw with a performance lever applied by patching
it at start-up, so that a lever's gain can be measured before anyone builds it
properly in mailgw/ (``python -m bench.run --variants "nolog+notouch"``).

Levers first measured here and now built into mailgw had their prototypes
removed: group commit, the one-second directory cache (AUTH look-ups included),
one CSPRNG read per token and the ASCII fast path before IDNA; "onehop" went
too (it was a copy of mailgw.smtp.delivery.commit_message to keep in step),
and so did "workersN" (N processes with SO_REUSEPORT): the real C{[server]
workers} setting is measured as the "mailgw-w2" row instead; and "inline"
(a batch's statements on the reactor's thread, its commit on the writer's).
bench/RESULTS.md keeps what each gave.

These are prototypes and upper bounds for measurement only. Some change
semantics on purpose (C{nosync} is not durable); none of this is ever loaded
by the real gateway.

  nolog       the per-connection and per-message info lines are not written
  nosync      PRAGMA synchronous=NORMAL: what the fsync costs (NOT durable)
  switch      the interpreter's switch interval from $SWITCH (seconds; Python's
              default 0.005) instead of mailgw.tap.SWITCH_INTERVAL
  notouch     a credential's last_used_at is written at most once a minute
  nostore     messages are read and thrown away, not stored (NOT durable):
              the ceiling of everything but the store
  nodkim      the relay sends every message unsigned (scenario (e)'s "DKIM off")

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


@lever("nodkim")
def _no_dkim():
    from twisted.internet import defer

    from mailgw.relay import signing

    def unsigned(self, entry):
        return defer.succeed((signing.StoreBody(self.store, entry.message_id, entry.size),
                              entry.size))
    signing.Signer.body_for = unsigned


@lever("nosync")
def _no_sync():
    from mailgw.store import sqlite
    configure = sqlite._configure

    def normal(connection, **settings):
        configure(connection, **settings)
        connection.execute("PRAGMA synchronous = NORMAL")
    sqlite._configure = normal


def _store_classes():
    """Every engine's store class: each overrides some writes of the base
    (SQLite's reactor-side writes, PostgreSQL's shared enqueue), so a lever
    patches each class, not the base alone."""
    from mailgw.store.postgres import PostgresStore
    from mailgw.store.sqlite import SQLiteStore
    return (SQLiteStore, PostgresStore)


@lever("notouch")
def _no_touch():
    from twisted.internet import defer
    written = {}

    def seldom_of(touch):
        def seldom(self, credential_id, when):
            if when - written.get(credential_id, float("-inf")) < 60:
                return defer.succeed(None)
            written[credential_id] = when
            return touch(self, credential_id, when)
        return seldom
    for cls in _store_classes():
        cls.touch_credential = seldom_of(cls.touch_credential)


@lever("nostore")
def _no_store():
    import itertools

    from twisted.internet import defer
    ids = itertools.count(1)

    def discard(self, envelope, body):
        body.read()
        return defer.succeed({rcpt: next(ids) for rcpt in envelope.rcpt_to})
    for cls in _store_classes():
        cls.enqueue = discard


@lever("switch")
def _switch():
    import os

    from mailgw import tap
    tap.SWITCH_INTERVAL = float(os.environ.get("SWITCH", "0.005"))


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
