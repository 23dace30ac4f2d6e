"""Crash safety, end to end: concurrent submissions, ``kill -9`` of the
gateway at a random moment, a restart — then every message that got a 250 is
in the queue exactly once with an intact body, and nothing is half-stored."""
from __future__ import annotations

import os
import random
import signal
import smtplib
import threading

from twisted.internet import defer, reactor

from mailgw.store import open_store
from tests.e2e.gateway import Gateway
from tests.e2e.test_submission import QUEUED, GatewayTestBase
from tests.helpers import on_postgres

CLIENTS = 6
TRAILER = b"-- end of message --\r\n"


def message(client: int, n: int) -> bytes:
    marker = f"c{client}-m{n}"
    body = (f"line {i} of {marker} " * 3 + "\r\n" for i in range(200 + 37 * n % 300))
    return (f"From: app@good.example\r\nTo: user@dest.example\r\nSubject: {marker}\r\n"
            f"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{marker}@good.example>\r\n\r\n"
            .encode() + "".join(body).encode() + TRAILER)


class CrashTests(GatewayTestBase):
    def submit_until_killed(self, client, acked, lock, stop):
        n = 0
        try:
            connection = smtplib.SMTP("127.0.0.1", self.gateway.port(), timeout=20)
            connection.login("any", self.key)
            while not stop.is_set():
                data = message(client, n)
                connection.mail("app@good.example")
                connection.rcpt("user@dest.example")
                code, text = connection.data(data)
                if code == 250:
                    with lock:
                        acked[QUEUED.match(text.decode()).group(1)] = data
                n += 1
        except (OSError, smtplib.SMTPException):
            return  # the gateway was killed under us

    @defer.inlineCallbacks
    def test_kill_9_loses_nothing_acknowledged(self):
        acked, lock, stop = {}, threading.Lock(), threading.Event()
        target = random.Random().randint(20, 120)
        threads = [threading.Thread(target=self.submit_until_killed,
                                    args=(c, acked, lock, stop), daemon=True)
                   for c in range(CLIENTS)]
        for thread in threads:
            thread.start()
        while True:
            with lock:
                if len(acked) >= target:
                    break
            if not any(t.is_alive() for t in threads):
                self.fail("clients stopped before the kill:\n" + self.gateway.log()[-3000:])
            threads[0].join(0.01)
        os.kill(self.gateway.process.pid, signal.SIGKILL)
        self.gateway.process.wait()
        stop.set()
        for thread in threads:
            thread.join(30)
        with lock:
            acked = dict(acked)

        restarted = Gateway(self.folder, self.config)
        self.addCleanup(restarted.stop)
        restarted.start(len(self.listeners))
        restarted.stop()

        store = open_store(self.url, reactor)
        yield store.start()
        self.addCleanup(store.close)
        entries = yield store.list_entries()
        by_token = {}
        for entry in entries:
            by_token.setdefault(entry.token, []).append(entry)
        for token in acked:
            self.assertEqual(len(by_token.get(token, [])), 1, f"{token} not stored exactly once")
        for token, rows in by_token.items():
            body = yield store.read_body(rows[0].message_id)
            self.assertEqual(len(body), rows[0].size)
            self.assertTrue(body.endswith(TRAILER), f"{token} is half-stored")
            if token in acked:
                self.assertTrue(body.endswith(b"\r\n" + acked[token]))
        self.assertGreaterEqual(len(acked), target)


PostgresCrashTests = on_postgres(CrashTests)
