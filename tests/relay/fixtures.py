"""Fixtures shared by the relay's store and service tests: a started store
(SQLite in the test's folder, or a fresh PostgreSQL database of the run's
cluster) with the helpers' tenancy, a Clock set to the wall clock, and a
way to enqueue a message."""
from __future__ import annotations

import io
import os
import time

from twisted.internet import defer
from twisted.internet.task import Clock

from mailgw.model import MessageEnvelope, generate_token
from mailgw.store.base import Q
from tests import pgcluster
from tests.helpers import make_store, seed_tenancy
from tests.store import postgres_admin

BODY = (b"Received: from client by mx.mailgw.test\r\nFrom: App <app@good.example>\r\n"
        b"To: to@dest.test\r\nSubject: relay test\r\n\r\nHello.\r\n.leading dot\r\n")


def _lock_of(entry_id):
    rows = yield Q("SELECT locked_by, locked_until, next_attempt_at FROM queue WHERE id = ?",
                   (entry_id,))
    return tuple(rows[0])


class StoreFixture:
    """A started store with the helpers' tenancy, on SQLite or PostgreSQL."""

    def store_url(self):
        """SQLite in the test's folder (kept in C{store_location})."""
        folder = self.mktemp()
        os.makedirs(folder)
        self.store_location = "sqlite:" + os.path.join(folder, "mailgw.sqlite3")
        return self.store_location

    @defer.inlineCallbacks
    def setUp(self):
        self.store = yield make_store(self, self.store_url())
        self.tenancy = yield seed_tenancy(self.store)
        self.clock = Clock()
        self.clock.advance(time.time() + 1)

    @defer.inlineCallbacks
    def enqueue(self, rcpts=("to@dest.test",), body=BODY, mail_from="app@good.example",
                status="queued", hold_reason=None):
        envelope = MessageEnvelope(
            token=generate_token(12), server_id=self.tenancy["web"].id, credential_id=None,
            mail_from=mail_from, rcpt_to=tuple(rcpts), sender_domain="good.example",
            protocol="smtp", status=status, hold_reason=hold_reason)
        ids = yield self.store.enqueue(envelope, io.BytesIO(body))
        return ids

    def lock_of(self, entry_id):
        return self.store._read(_lock_of, entry_id)


class PostgresFixture:
    """Mixed in before L{StoreFixture}: a fresh PostgreSQL database (skipped
    without one, failed under CI=true)."""

    def store_url(self):
        url, drop = pgcluster.fresh_database(postgres_admin())
        self.addCleanup(drop)
        self.store_location = url
        return url
