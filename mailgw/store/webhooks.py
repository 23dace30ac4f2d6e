"""The store's webhooks (docs/webhooks.md): a server's webhooks, the durable
outbox of requests, their attempts, and the one signing key.

Events are written by the transaction that causes them: the relay's settle
(MessageSent, MessageDelayed, MessageDeliveryFailed and, with the bounce it
queues, MessageBounced; MessageHeld when it holds a message it cannot sign)
and the enqueue of a held message (MessageHeld), so
that an event is in the outbox exactly when its change is committed. A node
claims due requests as the relay claims queue entries: by writing its id and
a lease end into them (PostgreSQL locks the candidates with C{FOR UPDATE
SKIP LOCKED}); only the node named in C{locked_by} may settle a request.
"""
from __future__ import annotations

import uuid as uuidlib

from twisted.internet import threads

from mailgw.interfaces import NotFound
from mailgw.model import Webhook, WebhookAttempt, WebhookRequest
from mailgw.store.base import (
    _QUEUE_SELECT, Q, _entry, _ids_clause, _require_server, claim_rows_of, release_leases_of,
    renew_leases_of,
)
from mailgw.webhooks import payloads, signing

_WEBHOOK_SELECT = (
    "SELECT w.id, w.uuid, w.server_id, o.permalink || '/' || s.permalink, w.name, w.url, "
    "w.all_events, w.enabled, w.created_at, w.last_used_at FROM webhooks w "
    "JOIN servers s ON s.id = w.server_id JOIN organizations o ON o.id = s.organization_id")
_REQUEST_SELECT = (
    "SELECT r.id, r.uuid, r.webhook_id, o.permalink || '/' || s.permalink, r.event, r.url, "
    "r.body, r.status, r.attempts, r.next_attempt_at, r.last_error, r.created_at "
    "FROM webhook_requests r JOIN webhooks w ON w.id = r.webhook_id "
    "JOIN servers s ON s.id = w.server_id JOIN organizations o ON o.id = s.organization_id")
_DUE = ("status = 'pending' AND next_attempt_at <= ? "
        "AND (locked_until IS NULL OR locked_until <= ?)")


def _request(row) -> WebhookRequest:
    body = row[6]
    return WebhookRequest(
        id=row[0], uuid=row[1], webhook_id=row[2], server=row[3], event=row[4], url=row[5],
        body=body.encode("utf-8") if isinstance(body, str) else bytes(body), status=row[7],
        attempts=row[8], next_attempt_at=row[9], last_error=row[10], created_at=row[11])


# -- webhooks ---------------------------------------------------------------------

def _webhooks(where: str, params: tuple):
    rows = yield Q(_WEBHOOK_SELECT + where + " ORDER BY w.id", params)
    if not rows:
        return []
    ids = [r[0] for r in rows]
    events = {}
    found = yield Q(f"SELECT webhook_id, event FROM webhook_events WHERE webhook_id IN "
                    f"{_ids_clause(ids)} ORDER BY event", tuple(ids))
    for webhook_id, event in found:
        events.setdefault(webhook_id, []).append(event)
    return [Webhook(id=r[0], uuid=r[1], server_id=r[2], server=r[3], name=r[4], url=r[5],
                    all_events=bool(r[6]), events=tuple(events.get(r[0], ())),
                    enabled=bool(r[7]), created_at=r[8], last_used_at=r[9]) for r in rows]


def _require_webhook(ref):
    """The webhook C{ref} names: its id (an int) or its uuid."""
    if isinstance(ref, int):
        found = yield from _webhooks(" WHERE w.id = ?", (ref,))
    else:
        found = yield from _webhooks(" WHERE w.uuid = ?", (str(ref),))
    if not found:
        raise NotFound(f"no webhook {ref}")
    return found[0]


def _add_webhook(server, url, name, events, all_events, now, uuid):
    unknown = sorted(set(events) - set(payloads.EVENTS))
    if unknown:
        raise ValueError(f"unknown webhook events: {', '.join(unknown)}; use "
                         f"{', '.join(payloads.EVENTS)}")
    if not all_events and not events:
        raise ValueError("a webhook needs events (or all of them)")
    owner = yield from _require_server(*server)
    rows = yield Q("INSERT INTO webhooks (uuid, server_id, name, url, all_events, enabled, "
                   "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                   (uuid, owner.id, name, url, bool(all_events), True, now))
    webhook_id = rows[0][0]
    if not all_events:
        for event in sorted(set(events)):
            yield Q("INSERT INTO webhook_events (webhook_id, event) VALUES (?, ?)",
                    (webhook_id, event))
    return (yield from _require_webhook(webhook_id))


def _list_webhooks(server):
    if server is None:
        return (yield from _webhooks("", ()))
    owner = yield from _require_server(*server)
    return (yield from _webhooks(" WHERE w.server_id = ?", (owner.id,)))


def _set_webhook_enabled(ref, enabled):
    found = yield from _require_webhook(ref)
    yield Q("UPDATE webhooks SET enabled = ? WHERE id = ?", (bool(enabled), found.id))
    return (yield from _require_webhook(found.id))


def _remove_webhook(ref):
    found = yield from _require_webhook(ref)
    # its requests, pending or not, and their attempts go with it (ON DELETE CASCADE)
    yield Q("DELETE FROM webhooks WHERE id = ?", (found.id,))
    return found


# -- events: written by the transaction that causes them ------------------------------

_WANTS = ("w.enabled = ? AND (w.all_events = ? OR EXISTS (SELECT 1 FROM webhook_events e "
          "WHERE e.webhook_id = w.id AND e.event = ?))")


def _subscribers(server_id, event):
    rows = yield Q(f"SELECT w.id, w.url FROM webhooks w WHERE w.server_id = ? AND {_WANTS} "
                   "ORDER BY w.id", (server_id, True, True, event))
    return rows


def _entry_subscribers(entry_id, event):
    """The webhooks that want C{event} of queue entry C{entry_id}'s server:
    one indexed query, the only cost of a settle on a server without any."""
    rows = yield Q("SELECT w.id, w.url FROM queue q JOIN messages m ON m.id = q.message_id "
                   f"JOIN webhooks w ON w.server_id = m.server_id WHERE q.id = ? AND {_WANTS} "
                   "ORDER BY w.id", (entry_id, True, True, event))
    return rows


def _write_requests(subscribers, event, payload, now):
    for webhook_id, url in subscribers:
        request_uuid = str(uuidlib.uuid4())
        body = payloads.request_body(event, now, payload, request_uuid).decode("utf-8")
        yield Q("INSERT INTO webhook_requests (uuid, webhook_id, event, url, body, status, "
                "attempts, next_attempt_at, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
                (request_uuid, webhook_id, event, url, body, now, now, now))


def _trigger(server_id, event, payload, now):
    """Write C{event} for each of the server's webhooks that wants it.

    @return: how many requests were written."""
    subscribers = yield from _subscribers(server_id, event)
    yield from _write_requests(subscribers, event, payload, now)
    return len(subscribers)


def _message_of(entry):
    rows = yield Q("SELECT data FROM message_chunks WHERE message_id = ? AND seq = 0",
                   (entry.message_id,))
    head = bytes(rows[0][0]) if rows else None
    return payloads.message_hash(entry, *payloads.header_facts(head))


def delivery_event(entry_id, event, attempt, retry_at=None, hold_reason=None):
    """The settle of queue entry C{entry_id} with C{attempt} (a
    L{mailgw.model.DeliveryAttempt}) as C{event}: its requests written.
    (MessageHeld here is a hold by the relay, C{hold_reason} saying why.)

    @return: the entry's message hash when C{event} was written, else C{None}.
    """
    subscribers = yield from _entry_subscribers(entry_id, event)
    if not subscribers:
        return None
    rows = yield Q(_QUEUE_SELECT + " WHERE q.id = ?", (entry_id,))
    entry = _entry(rows[0])
    message = yield from _message_of(entry)
    payload = payloads.delivery_payload(
        event, message, details=payloads.delivery_details(
            event, entry, attempt.remote_host, retry_at=retry_at, hold_reason=hold_reason),
        output=None if event == "MessageHeld" else attempt.text,
        timestamp=attempt.attempted_at)
    yield from _write_requests(subscribers, event, payload, attempt.attempted_at)
    return message


def bounce_event(entry_id, bounce_ids, now):
    """MessageBounced for entry C{entry_id}, whose bounce was queued as
    C{bounce_ids} (C{{recipient: entry id}}, the sender's one entry)."""
    if not bounce_ids:
        return
    subscribers = yield from _entry_subscribers(entry_id, "MessageBounced")
    if not subscribers:
        return
    rows = yield Q(_QUEUE_SELECT + " WHERE q.id = ?", (entry_id,))
    original = yield from _message_of(_entry(rows[0]))
    [bounce_id] = list(bounce_ids.values())[:1]
    rows = yield Q(_QUEUE_SELECT + " WHERE q.id = ?", (bounce_id,))
    bounce = yield from _message_of(_entry(rows[0]))
    yield from _write_requests(subscribers, "MessageBounced",
                               payloads.bounce_payload(original, bounce), now)


def held_events(ids, hold_reason, now):
    """MessageHeld for each queue entry of C{ids} (just queued, held)."""
    for entry_id in ids:
        subscribers = yield from _entry_subscribers(entry_id, "MessageHeld")
        if not subscribers:
            return  # the same server for every entry: none wants it
        rows = yield Q(_QUEUE_SELECT + " WHERE q.id = ?", (entry_id,))
        entry = _entry(rows[0])
        message = yield from _message_of(entry)
        payload = payloads.delivery_payload(
            "MessageHeld", message, details=payloads.delivery_details(
                "MessageHeld", entry, None, hold_reason=hold_reason),
            output=None, timestamp=now)
        yield from _write_requests(subscribers, "MessageHeld", payload, now)


# -- the outbox: claims, settles, history ----------------------------------------------

def _claim_webhook_requests(node_id, now, lease, limit, lock):
    ids = yield from claim_rows_of("webhook_requests", _DUE, node_id, now, lease, limit,
                                   lock)
    if not ids:
        return []
    rows = yield Q(_REQUEST_SELECT + f" WHERE r.id IN {_ids_clause(ids)} ORDER BY r.id",
                   tuple(ids))
    return [_request(r) for r in rows]


def _renew_webhook_leases(node_id, ids, until):
    return (yield from renew_leases_of("webhook_requests", "pending", node_id, ids, until))


def _release_webhook_leases(node_id, ids):
    return (yield from release_leases_of("webhook_requests", node_id, ids))


def _settle_webhook_request(request_id, node_id, attempt, next_attempt_at):
    """Record C{attempt}; the request becomes delivered, pending again (due
    at C{next_attempt_at}) or failed, if this node still holds it.

    @return: whether it did."""
    status = ("delivered" if attempt.delivered
              else "pending" if next_attempt_at is not None else "failed")
    rows = yield Q(
        "UPDATE webhook_requests SET status = ?, next_attempt_at = ?, attempts = "
        "attempts + 1, last_error = ?, locked_by = NULL, locked_until = NULL, "
        "updated_at = ? WHERE id = ? AND locked_by = ? AND status = 'pending' "
        "RETURNING webhook_id",
        (status, next_attempt_at, None if attempt.delivered else attempt.error,
         attempt.attempted_at, request_id, node_id))
    if not rows:
        return False
    yield Q("INSERT INTO webhook_attempts (request_id, attempted_at, node, status_code, "
            "error, will_retry) VALUES (?, ?, ?, ?, ?, ?)",
            (request_id, attempt.attempted_at, attempt.node, attempt.status_code,
             attempt.error, bool(attempt.will_retry)))
    if attempt.delivered:
        yield Q("UPDATE webhooks SET last_used_at = ? WHERE id = ?",
                (attempt.attempted_at, rows[0][0]))
    return True


def _list_webhook_requests(server, webhook, status, limit):
    where, params = [], []
    if server is not None:
        owner = yield from _require_server(*server)
        where.append("w.server_id = ?")
        params.append(owner.id)
    if webhook is not None:
        found = yield from _require_webhook(webhook)
        where.append("r.webhook_id = ?")
        params.append(found.id)
    if status is not None:
        where.append("r.status = ?")
        params.append(status)
    sql = _REQUEST_SELECT + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY r.id DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    rows = yield Q(sql, tuple(params))
    requests = [_request(r) for r in rows]
    attempts = {}
    if requests:
        ids = [r.id for r in requests]
        found = yield Q("SELECT request_id, attempted_at, status_code, error, will_retry, "
                        f"node FROM webhook_attempts WHERE request_id IN {_ids_clause(ids)} "
                        "ORDER BY attempted_at, id", tuple(ids))
        for row in found:
            attempts.setdefault(row[0], []).append(
                WebhookAttempt(row[0], row[1], row[2], row[3], bool(row[4]), row[5]))
    return [(r, tuple(attempts.get(r.id, ()))) for r in requests]


def _webhook_outbox_counts():
    rows = yield Q("SELECT status, count(*) FROM webhook_requests GROUP BY status")
    return dict(rows)


def _prune_webhook_requests(before):
    rows = yield Q("DELETE FROM webhook_requests WHERE status <> 'pending' AND "
                   "updated_at < ? RETURNING id", (before,))
    return len(rows)


def _signing_key():
    rows = yield Q("SELECT private_key FROM webhook_signing_key WHERE id = 1")
    return rows[0][0] if rows else None


def _keep_signing_key(private_key, now):
    # the first node's key wins; every other node reads that one
    yield Q("INSERT INTO webhook_signing_key (id, private_key, created_at) VALUES (1, ?, ?) "
            "ON CONFLICT (id) DO NOTHING", (private_key, now))
    return (yield from _signing_key())


class WebhookOperations:
    """The store's L{mailgw.interfaces.IWebhookStore} methods, for the
    engines (which also subclass L{mailgw.store.base.Store})."""

    def add_webhook(self, server, url, name="", events=(), all_events=False):
        return self._run(_add_webhook, server, url, name, tuple(events), all_events,
                         self._now(), str(uuidlib.uuid4()))

    def list_webhooks(self, server=None):
        return self._read(_list_webhooks, server)

    def get_webhook(self, ref):
        return self._read(_require_webhook, ref)

    def set_webhook_enabled(self, ref, enabled):
        return self._run(_set_webhook_enabled, ref, enabled)

    def remove_webhook(self, ref):
        return self._run(_remove_webhook, ref)

    def trigger_webhook(self, server_id, event, payload):
        if event not in payloads.EVENTS:
            raise ValueError(f"unknown webhook event {event}")
        return self._run(_trigger, server_id, event, payload, self._now())

    def claim_webhook_requests(self, node_id, now, lease, limit):
        # claim_lock: FOR UPDATE SKIP LOCKED on PostgreSQL (see base.Store)
        return self._run(_claim_webhook_requests, node_id, now, lease, limit,
                         self.claim_lock)

    def renew_webhook_leases(self, node_id, request_ids, until):
        return self._run(_renew_webhook_leases, node_id, tuple(request_ids), until)

    def release_webhook_leases(self, node_id, request_ids):
        return self._run(_release_webhook_leases, node_id, tuple(request_ids))

    def settle_webhook_request(self, request_id, node_id, attempt, next_attempt_at=None):
        return self._run(_settle_webhook_request, request_id, node_id, attempt,
                         next_attempt_at)

    def list_webhook_requests(self, server=None, webhook=None, status=None, limit=None):
        return self._read(_list_webhook_requests, server, webhook, status, limit)

    def webhook_outbox_counts(self):
        return self._read(_webhook_outbox_counts)

    def prune_webhook_requests(self, before):
        return self._run(_prune_webhook_requests, before)

    def webhook_signing_key(self):
        d = self._read(_signing_key)

        def generate_if_none(found):
            if found is not None:
                return found
            made = threads.deferToThread(signing.generate_private_key)
            return made.addCallback(lambda pem: self._run(_keep_signing_key, pem,
                                                          self._now()))
        return d.addCallback(generate_if_none)

