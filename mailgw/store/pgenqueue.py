"""The hot write, C{enqueue}, in one PostgreSQL statement, shared by the
messages of a batch.

The portable C{enqueue} (L{mailgw.store.base}) sends one statement for the
message, one per body chunk and one per recipient: for a typical message,
three round trips on the writer connection, which every write of a batch
waits for in turn. PostgreSQL runs data-modifying statements in C{WITH}
(PostgreSQL documentation, "Data-Modifying Statements in WITH"), so the
message rows, their one chunk each and their queue rows go in one statement,
with the same rows, ids and constraints as the portable form; and the
messages queued in one batch share that statement (L{ENQUEUE_TOGETHER}), up
to a chunk's worth of bodies.

A body larger than one chunk, or a held message (which also writes webhook
events), takes the portable form: one statement holding a whole large body
is what the chunks are there to avoid.
"""
from __future__ import annotations

import io

from mailgw.store.base import CHUNK_SIZE, Q, _enqueue
from mailgw.store.pgbatch import Together

_ENQUEUE = (
    "WITH m AS (INSERT INTO messages (token, server_id, credential_id, mail_from, "
    "sender_domain, protocol, size, created_at) "
    "SELECT token, server_id, credential_id, mail_from, sender_domain, protocol, size, stamp "
    "FROM unnest(?::text[], ?::bigint[], ?::bigint[], ?::text[], ?::text[], ?::text[], "
    "?::bigint[], ?::double precision[]) WITH ORDINALITY AS v(token, server_id, "
    "credential_id, mail_from, sender_domain, protocol, size, stamp, n) "
    "ORDER BY n RETURNING id, token), "
    "c AS (INSERT INTO message_chunks (message_id, seq, data) SELECT m.id, 0, v.data "
    "FROM unnest(?::text[], ?::bytea[]) AS v(token, data) JOIN m USING (token)), "
    "q AS (INSERT INTO queue (message_id, rcpt_to, status, hold_reason, next_attempt_at, "
    "created_at, updated_at) SELECT m.id, v.rcpt, v.status, v.reason, v.stamp, v.stamp, "
    "v.stamp FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], "
    "?::double precision[]) WITH ORDINALITY AS v(token, rcpt, status, reason, stamp, n) "
    "JOIN m USING (token) ORDER BY v.n RETURNING id, message_id, rcpt_to) "
    "SELECT m.token, q.id, q.rcpt_to FROM q JOIN m ON m.id = q.message_id")


def shareable_size(envelope, body, now) -> int | None:
    """The body's size when the message may go in a shared statement, else
    C{None} (a body over one chunk, a held message, no recipient)."""
    size = body.seek(0, io.SEEK_END)
    if size > CHUNK_SIZE or envelope.status == "held" or not envelope.rcpt_to:
        return None
    return size


def enqueue_at_once(envelope, body, now):
    """L{mailgw.store.base._enqueue}, in one statement where it can be.

    @return: C{{recipient: queue id}}, as the portable form returns it.
    """
    if shareable_size(envelope, body, now) is None:
        return (yield from _enqueue(envelope, body, now))
    return (yield from enqueue_many([(envelope, body, now)]))[0]


def enqueue_many(calls):
    """Several messages, each shareable (L{shareable_size}), in one statement.

    @param calls: C{(envelope, body, now)} per message.
    @return: a list of C{{recipient: queue id}}, one per message in order.
    """
    messages, chunks, recipients = [[] for _ in range(8)], [[], []], [[] for _ in range(5)]
    for envelope, body, now in calls:
        size = body.seek(0, io.SEEK_END)
        body.seek(0)
        for column, value in zip(messages, (
                envelope.token, envelope.server_id, envelope.credential_id,
                envelope.mail_from, envelope.sender_domain, envelope.protocol, size, now)):
            column.append(value)
        if data := body.read():  # an empty body has no chunk row, as in the portable form
            chunks[0].append(envelope.token)
            chunks[1].append(data)
        for rcpt in envelope.rcpt_to:
            for column, value in zip(recipients, (envelope.token, rcpt, envelope.status,
                                                  envelope.hold_reason, now)):
                column.append(value)
    rows = yield Q(_ENQUEUE, (*messages, *chunks, *recipients))
    # ids grow in recipient order; a repeated recipient maps to its last row
    found = {}
    for token, queue_id, rcpt in sorted(rows, key=lambda row: row[1]):
        found.setdefault(token, {})[rcpt] = queue_id
    return [found[envelope.token] for envelope, _, _ in calls]


#: enqueues of one batch share statements, up to a chunk's worth of bodies
ENQUEUE_TOGETHER = Together(size=shareable_size, budget=CHUNK_SIZE, run=enqueue_many)
