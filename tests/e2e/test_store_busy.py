"""A SQLite database locked by another process: the real gateway answers a
submission with 451 within C{database.store_timeout} (not after its clients
have given up), and accepts the next one once the lock is gone."""
from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys
import time

from tests.e2e import test_submission
from tests.e2e.test_submission import MESSAGE, QUEUED, GatewayTestBase

STORE_TIMEOUT = 1.0
#: what the answer may take on top of the store timeout on a slow machine;
#: less than the store timeout, so that waiting twice (the write of AUTH's
#: last-use time, then the message's own) fails the test
MARGIN = 0.75

#: holds the database with BEGIN EXCLUSIVE until a line arrives on stdin
HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
print("released", flush=True)
"""


class LockedStoreTests(GatewayTestBase):
    def setUp(self):
        real = test_submission.write_config

        def with_store_timeout(*args, **kwargs):
            path = real(*args, **kwargs)
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(text.replace("[database]\n",
                                     f"[database]\nstore_timeout = {STORE_TIMEOUT}\n", 1))
            return path
        self.patch(test_submission, "write_config", with_store_timeout)
        return super().setUp()

    def database_url_for_test(self):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        return "sqlite:" + os.path.join(folder, "mailgw.sqlite3")

    def hold_the_database(self):
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, self.url[len("sqlite:"):]],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

        def stop():
            if holder.poll() is None:
                holder.kill()
            holder.wait()
            holder.stdin.close()
            holder.stdout.close()
        self.addCleanup(stop)
        self.assertEqual(holder.stdout.readline(), "locked\n")
        return holder

    def submit(self):
        """One submission over SMTP; C{((code, text) of the reply to the
        final dot, seconds it took)}."""
        client = smtplib.SMTP("127.0.0.1", self.gateway.port(), timeout=30)
        self.addCleanup(client.close)
        client.ehlo("e2e.client")
        client.user, client.password = "anyone", self.key
        self.assertEqual(client.auth("PLAIN", client.auth_plain)[0], 235)
        client.mail("app@good.example")
        client.rcpt("user@dest.example")
        self.assertEqual(client.docmd("DATA")[0], 354)
        client.send(re.sub(rb"(?m)^\.", b"..", MESSAGE) + b".\r\n")
        started = time.monotonic()
        reply = client.getreply()
        return reply, time.monotonic() - started

    def test_451_within_the_store_timeout_then_accepted_once_released(self):
        holder = self.hold_the_database()
        (code, text), took = self.submit()
        self.assertEqual((code, text), (451, b"Temporary failure, please try again later"))
        self.assertTrue(STORE_TIMEOUT / 2 <= took < STORE_TIMEOUT + MARGIN, took)
        holder.stdin.write("\n")
        holder.stdin.flush()
        self.assertEqual(holder.stdout.readline(), "released\n")
        (code, text), _ = self.submit()
        self.assertEqual(code, 250, text)
        token = QUEUED.match(text.decode()).group(1)
        self.assert_queued(token)
