"""What-if experiments: mailgw with a performance lever applied by patching
it at start-up, so that a lever's gain can be measured before anyone builds it
properly in mailgw/ (``python -m bench.run --variants "nolog+notouch"``).

Two levers first measured here are now built into mailgw, and their
prototypes were removed: group commit (b3e01cd) and the one-second directory
cache (0e08edf); bench/RESULTS.md keeps what they gave.

These are prototypes and upper bounds for measurement only. Some change
semantics on purpose (C{nosync} is not durable); none of this is ever loaded
by the real gateway.

  nolog       the per-connection and per-message info lines are not written
  nosync      PRAGMA synchronous=NORMAL: what the fsync costs (NOT durable)
  notouch     a credential's last_used_at is written at most once a minute
  onehop      the end-of-DATA reads (credential, server, domains, send limit)
              and the enqueue run as one transaction on the writer thread,
              instead of three or four thread round trips
  authcache   AUTH's credential look-up is cached for a second too
  fasttoken   queue and trace ids from one getrandom() call each (today one
              secrets.choice, i.e. a syscall or more, per character)
  idnacache   the IDNA encoding of domain names is memoised
  reuseport   listening sockets get SO_REUSEPORT (used by "workersN": N
              gateway processes on one port, the kernel spreading connections)

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


@lever("authcache")
def _auth_cache():
    """credential_by_key (every AUTH PLAIN/LOGIN) answered from memory for a
    second, as the directory cache does for the message path."""
    from twisted.internet import defer

    from mailgw.store import base
    lookup = base.Store.credential_by_key
    answers = {}

    def cached(self, key, type):
        now = self._now()
        hit = answers.get((key, type))
        if hit is not None and hit[0] > now:
            return defer.succeed(hit[1])

        def keep(value):
            if len(answers) > 10_000:
                answers.clear()
            answers[(key, type)] = (now + 1.0, value)
            return value
        return lookup(self, key, type).addCallback(keep)
    base.Store.credential_by_key = cached


@lever("fasttoken")
def _fast_token():
    """Queue and trace ids from one getrandom() each, instead of one
    secrets.choice (one or more getrandom syscalls) per character."""
    import os

    from mailgw import model
    from mailgw.smtp import delivery, protocol
    alphabet = model._TOKEN_ALPHABET
    limit = 256 - 256 % len(alphabet)

    def generate_token(length: int = 8) -> str:
        out = []
        while len(out) < length:
            out += [alphabet[b % len(alphabet)] for b in os.urandom(length * 2) if b < limit]
        return "".join(out[:length])
    for module in (model, delivery, protocol):
        module.generate_token = generate_token


@lever("idnacache")
def _idna_cache():
    import functools

    from mailgw import address
    address._to_ascii = functools.lru_cache(maxsize=4096)(address._to_ascii)


@lever("reuseport")
def _reuse_port():
    import socket

    from twisted.internet import tcp
    create = tcp.Port.createInternetSocket

    def reusable(self):
        s = create(self)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return s
    tcp.Port.createInternetSocket = reusable


def apply(names: str) -> list[str]:
    chosen = [n for n in names.split("+") if n and n != "base"
              and not n.startswith("workers")]
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
