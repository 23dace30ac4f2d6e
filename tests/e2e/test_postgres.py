"""PostgreSQL in production shape: two gateway nodes on one database, and a
database outage under a running gateway (451 meanwhile, then it accepts again
by itself — no restart, nothing lost or duplicated)."""
from __future__ import annotations

import os
import smtplib
import threading
import urllib.error
import urllib.request

from tests import pgcluster
from tests.e2e.gateway import Gateway, write_config
from tests.e2e.test_submission import MESSAGE, QUEUED, GatewayTestBase
from tests.store import postgres_bindir

MESSAGES = 500
CLIENTS = 10


class TwoNodeTests(GatewayTestBase):
    engine = "postgresql"

    def setUp(self):
        d = super().setUp()

        def second_node(_):
            folder = os.path.join(self.folder, "node2")
            os.makedirs(folder)
            config = write_config(folder, database_url=self.url, listeners=self.listeners)
            self.node2 = Gateway(folder, config)
            self.addCleanup(self.node2.stop)
            self.node2.start(1)
        return d.addCallback(second_node)

    def send_batch(self, port, count, acked, lock):
        client = smtplib.SMTP("127.0.0.1", port, timeout=60)
        client.login("any", self.key)
        for _ in range(count):
            client.mail("app@good.example")
            client.rcpt("user@dest.example")
            code, text = client.data(MESSAGE)
            self.assertEqual(code, 250, text)
            with lock:
                acked.append(QUEUED.match(text.decode()).group(1))
        client.quit()

    def test_500_messages_across_two_nodes_each_stored_once(self):
        acked, lock = [], threading.Lock()
        ports = [self.gateway.port(), self.node2.port()]
        workers = [threading.Thread(target=self.send_batch,
                                    args=(ports[i % 2], MESSAGES // CLIENTS, acked, lock))
                   for i in range(CLIENTS)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(300)
        self.assertEqual(len(acked), MESSAGES)
        self.assertEqual(len(set(acked)), MESSAGES)
        entries = self.queue()
        self.assertEqual(sorted(e["token"] for e in entries), sorted(acked))
        self.assertIn("queued as", self.node2.log())


class DatabaseOutageTests(GatewayTestBase):
    engine = "postgresql"

    def setUp(self):
        postgres_bindir()
        self.cluster = pgcluster.start_cluster()
        self.addCleanup(self.cluster.destroy)
        return super().setUp()

    def database_url_for_test(self):
        return self.cluster.url

    def health(self):
        url = f"http://127.0.0.1:{self.gateway.metrics_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    def test_451_while_down_then_accepts_again(self):
        client = smtplib.SMTP("127.0.0.1", self.gateway.port(), timeout=60)
        self.addCleanup(client.close)
        client.login("any", self.key)
        self.assertEqual(self.health(), 200)
        self.cluster.stop_server()
        try:
            self.assertEqual(client.mail("app@good.example")[0], 250)
            self.assertEqual(client.rcpt("user@dest.example"),
                             (451, b"Temporary failure, please try again later"))
            self.assertEqual(self.health(), 503)
        finally:
            self.cluster.start_server()
        # the 451 reset the transaction (docs/smtp.md §2); the session itself survived
        self.assertEqual(client.rcpt("user@dest.example")[0], 503)
        self.assertEqual(client.mail("app@good.example")[0], 250)
        self.assertEqual(client.rcpt("user@dest.example")[0], 250)
        code, text = client.data(MESSAGE)
        self.assertEqual(code, 250, text)
        token = QUEUED.match(text.decode()).group(1)
        self.assertEqual(self.health(), 200)
        self.assertEqual([e["token"] for e in self.queue()], [token])
        self.assertIn("store unavailable", self.gateway.log())
