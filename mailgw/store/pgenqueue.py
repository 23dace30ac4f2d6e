"""The hot write, C{enqueue}, in one PostgreSQL statement.

The portable C{enqueue} (L{mailgw.store.base}) sends one statement for the
message, one per body chunk and one per recipient: for a typical message,
three round trips on the writer connection, which every write of a batch
waits for in turn. PostgreSQL runs data-modifying statements in C{WITH}
(PostgreSQL documentation, "Data-Modifying Statements in WITH"), so the
message row, its one chunk and its queue rows go in one statement, with the
same rows, ids and constraints as the portable form. A body larger than one
chunk, or a held message (which also writes webhook events), takes the
portable form: one statement holding a whole large body is what the chunks
are there to avoid.
"""
from __future__ import annotations

import io

from mailgw.store.base import CHUNK_SIZE, Q, _enqueue

_MESSAGE = (
    "WITH m AS (INSERT INTO messages (token, server_id, credential_id, mail_from, "
    "sender_domain, protocol, size, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "RETURNING id)")
_CHUNK = ", c AS (INSERT INTO message_chunks (message_id, seq, data) SELECT m.id, 0, ? FROM m)"
_QUEUE = (
    " INSERT INTO queue (message_id, rcpt_to, status, hold_reason, next_attempt_at, "
    "created_at, updated_at) SELECT m.id, r.rcpt, ?, ?, ?, ?, ? "
    "FROM m, unnest(?::text[]) WITH ORDINALITY AS r(rcpt, n) ORDER BY r.n "
    "RETURNING id, rcpt_to")


def enqueue_at_once(envelope, body, now):
    """L{mailgw.store.base._enqueue}, in one statement where it can be.

    @return: C{{recipient: queue id}}, as the portable form returns it.
    """
    size = body.seek(0, io.SEEK_END)
    if size > CHUNK_SIZE or envelope.status == "held" or not envelope.rcpt_to:
        return (yield from _enqueue(envelope, body, now))
    body.seek(0)
    chunk = body.read()
    params = (envelope.token, envelope.server_id, envelope.credential_id,
              envelope.mail_from, envelope.sender_domain, envelope.protocol, size, now)
    sql = _MESSAGE
    if chunk:  # an empty body has no chunk row, as in the portable form
        sql += _CHUNK
        params += (chunk,)
    rows = yield Q(sql + _QUEUE, params + (envelope.status, envelope.hold_reason, now, now, now,
                                            list(envelope.rcpt_to)))
    # ids grow in recipient order; a repeated recipient maps to its last row
    return {rcpt: queue_id for queue_id, rcpt in sorted(rows)}
