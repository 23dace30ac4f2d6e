"""PostgreSQL's C{enqueue} in one statement (L{mailgw.store.pgenqueue}):
one round trip for a typical message, and the same rows and result as the
portable form, which large and held messages still take."""
from __future__ import annotations

import io

from twisted.internet import defer
from twisted.trial import unittest

from mailgw.model import MessageEnvelope
from mailgw.store.base import CHUNK_SIZE, Q, _enqueue
from mailgw.store.pgenqueue import ENQUEUE_TOGETHER, enqueue_at_once, enqueue_many
from mailgw.store.postgres import PostgresStore
from tests import pgcluster
from tests.store import postgres_admin


def _envelope(token="T1", rcpts=("a@x.example", "b@x.example"), server_id=1, **kw):
    return MessageEnvelope(token, server_id, None, "f@acme.example", tuple(rcpts),
                           "acme.example", "ESMTPA", **kw)


def _statements(gen, answers):
    """Drive a store generator, answering its statements in turn."""
    sent = [next(gen)]
    try:
        for rows in answers:
            sent.append(gen.send(rows))
    except StopIteration as stop:
        return sent, stop.value
    raise AssertionError(f"still running after {len(sent)} statements")


def _stored(token):
    rows = yield Q(
        "SELECT m.size, m.sender_domain, q.rcpt_to, q.status, q.hold_reason, "
        "q.next_attempt_at, q.created_at, q.updated_at, q.attempts FROM queue q "
        "JOIN messages m ON m.id = q.message_id WHERE m.token = ? ORDER BY q.id", (token,))
    chunks = yield Q("SELECT c.seq, c.data FROM message_chunks c JOIN messages m "
                     "ON m.id = c.message_id WHERE m.token = ? ORDER BY c.seq", (token,))
    return rows, chunks


class StatementTests(unittest.SynchronousTestCase):
    def test_a_typical_message_is_one_statement(self):
        sent, ids = _statements(enqueue_at_once(_envelope(), io.BytesIO(b"body"), 7.0),
                                [[("T1", 12, "b@x.example"), ("T1", 11, "a@x.example")]])
        self.assertEqual(len(sent), 1)
        self.assertIn("message_chunks", sent[0].sql)
        self.assertEqual(ids, {"a@x.example": 11, "b@x.example": 12})
        self.assertEqual(list(ids), ["a@x.example", "b@x.example"])

    def test_messages_share_one_statement(self):
        calls = [(_envelope("T1"), io.BytesIO(b"one"), 7.0),
                 (_envelope("T2", ["c@x.example"]), io.BytesIO(b""), 8.0)]
        sent, ids = _statements(enqueue_many(calls), [[
            ("T2", 13, "c@x.example"), ("T1", 11, "a@x.example"), ("T1", 12, "b@x.example")]])
        self.assertEqual(len(sent), 1)
        self.assertEqual(ids, [{"a@x.example": 11, "b@x.example": 12}, {"c@x.example": 13}])

    def test_large_and_held_messages_take_the_portable_form(self):
        for envelope, size in [(_envelope(), CHUNK_SIZE + 1),
                               (_envelope(status="held", hold_reason="why"), 10)]:
            self.assertIsNone(ENQUEUE_TOGETHER.size(envelope, io.BytesIO(b"x" * size), 7.0))
            first = next(enqueue_at_once(envelope, io.BytesIO(b"x" * size), 7.0))
            self.assertEqual(first, next(_enqueue(envelope, io.BytesIO(b"x" * size), 7.0)))
        self.assertEqual(ENQUEUE_TOGETHER.size(_envelope(), io.BytesIO(b"x" * CHUNK_SIZE), 7.0),
                         CHUNK_SIZE)


class SameRowsTests(unittest.TestCase):
    """Against the run's PostgreSQL: the one statement stores what the
    portable form stores."""

    @defer.inlineCallbacks
    def started_store(self):
        """A store on a fresh database, with one server to queue for."""
        from twisted.internet import reactor
        url, drop = pgcluster.fresh_database(postgres_admin())
        self.addCleanup(drop)
        store = PostgresStore(url, reactor)
        yield store.start()
        self.addCleanup(store.close)
        yield store.upgrade()
        yield store.add_organization("acme", "Acme")
        server = yield store.add_server("acme", "mail", "Mail")
        return store, server

    @defer.inlineCallbacks
    def test_same_rows_and_result_as_the_portable_form(self):
        store, server = yield self.started_store()
        rcpts = ("a@x.example", "b@x.example", "a@x.example")  # one twice
        for body in (b"Subject: hi\r\n\r\nbody\r\n", b""):
            one = _envelope(f"ONE{len(body)}", rcpts, server.id)
            portable = _envelope(f"PORTABLE{len(body)}", rcpts, server.id)
            at_once = yield store.enqueue(one, io.BytesIO(body))
            reference = yield store._run(_enqueue, portable, io.BytesIO(body), store._now())
            self.assertEqual(list(at_once), list(reference))
            self.assertEqual(at_once["a@x.example"] - at_once["b@x.example"],
                             reference["a@x.example"] - reference["b@x.example"])
            rows, chunks = yield store._read(_stored, one.token)
            reference_rows, reference_chunks = yield store._read(_stored, portable.token)
            self.assertEqual(chunks, reference_chunks)
            self.assertEqual([r[:5] + r[8:] for r in rows],
                             [r[:5] + r[8:] for r in reference_rows])
            self.assertEqual(len(rows), 3)

    @defer.inlineCallbacks
    def test_messages_of_a_batch_each_get_their_own_rows(self):
        """Queued while another write runs, they share one statement: each
        caller gets its own recipients' ids, and each id is its row."""
        store, server = yield self.started_store()
        blocker = store.add_organization("other", "Other")
        shapes = [(("a@x.example",), b"one"), (("b@x.example", "c@x.example"), b""),
                  (("d@x.example", "d@x.example"), b"three"),
                  (("e@x.example",), b"x" * CHUNK_SIZE)]
        calls = [store.enqueue(_envelope(f"T{i}", rcpts, server.id), io.BytesIO(body))
                 for i, (rcpts, body) in enumerate(shapes)]
        yield blocker
        results = yield defer.gatherResults(calls)
        for i, ((rcpts, body), ids) in enumerate(zip(shapes, results)):
            self.assertEqual(list(ids), list(dict.fromkeys(rcpts)))
            for rcpt, entry_id in ids.items():
                entry = yield store.get_entry(entry_id)
                self.assertEqual((entry.token, entry.rcpt_to, entry.size),
                                 (f"T{i}", rcpt, len(body)))
                self.assertEqual((yield store.read_body(entry.message_id)), body)
