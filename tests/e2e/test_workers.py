"""``[server] workers = 2``, end to end: the real ``twistd -n mailgw`` and
its worker process on one STARTTLS listener, many smtplib clients at once.

  - every message that got a 250 is stored exactly once (SQLite and
    PostgreSQL), and both processes served some of them (told apart by the
    ``worker 1:`` prefix of the worker's log lines);
  - SIGTERM to twistd stops the worker too, and leaves no process behind;
  - a worker killed with SIGKILL is logged with its signal and started again;
  - a worker whose twistd process is killed with SIGKILL stops by itself;
  - the relay, in twistd's process, sends a message a worker took at once,
    not at its next poll.
"""
from __future__ import annotations

import os
import re
import signal
import smtplib
import threading
import time

from twisted.internet import defer, reactor, task, threads

from mailgw.admin.devsetup import make_certificate
from mailgw.store import open_store
from tests.e2e.gateway import send_smtp
from tests.e2e.test_submission import MESSAGE, QUEUED, GatewayTestBase
from tests.e2e.test_tls import client_context
from tests.helpers import on_postgres
from tests.relay.sink import Sink

CLIENTS = 8
MESSAGES_PER_CLIENT = 5
WORKER_STARTED = re.compile(r"worker 1 started \(pid (\d+)\)")
WAIT = 20


def message(client: int, n: int) -> bytes:
    return (f"From: app@good.example\r\nTo: user@dest.example\r\nSubject: c{client}-m{n}\r\n"
            f"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <c{client}-m{n}@good.example>\r\n\r\nbody of c{client}-m{n}\r\n"
            ).encode()


def gone(pid: int) -> bool:
    """Whether process C{pid} has ended (a zombie has: reaping it is up to
    whoever its parent now is)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


class WorkersBase(GatewayTestBase):
    """A gateway with workers = 2 on one STARTTLS listener, once its worker
    is serving."""

    listeners = [{"endpoint": "tcp:0:interface=127.0.0.1", "tls": "starttls"}]
    config_tables = "[server]\nworkers = 2\n"

    def tls_settings(self):
        cert_path = os.path.join(self.folder, "cert.pem")
        key_path = os.path.join(self.folder, "key.pem")
        cert, key = make_certificate("localhost")
        for path, data in ((cert_path, cert), (key_path, key)):
            with open(path, "wb") as f:
                f.write(data)
        return {"certificate": cert_path, "private_key": key_path}

    def setUp(self):
        d = defer.maybeDeferred(super().setUp)
        d.addCallback(lambda _: self.wait_for_log("worker 1: store open: accepting mail"))
        return d

    def wait_for_log(self, text: str, count: int = 1) -> str:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            log = self.gateway.log()
            if log.count(text) >= count:
                return log
            time.sleep(0.05)
        self.fail(f"no {text!r} in the log:\n{self.gateway.log()[-3000:]}")

    def worker_pid(self, nth: int = 1) -> int:
        pids = WORKER_STARTED.findall(self.wait_for_log("worker 1 started", nth))
        return int(pids[nth - 1])

    def submit_all(self) -> dict:
        """Every client's messages at once; the queue id of each 250."""
        acked, errors, lock = {}, [], threading.Lock()

        def client(c):
            for n in range(MESSAGES_PER_CLIENT):
                try:
                    connection = smtplib.SMTP("127.0.0.1", self.gateway.port("starttls"),
                                              timeout=30)
                    try:
                        connection.starttls(context=client_context())
                        connection.login("anyone", self.key)
                        connection.mail("app@good.example")
                        connection.rcpt("user@dest.example")
                        code, text = connection.data(message(c, n))
                        connection.quit()
                    finally:
                        connection.close()
                except (OSError, smtplib.SMTPException) as e:
                    with lock:
                        errors.append(f"c{c}-m{n}: {e!r}")
                    continue
                with lock:
                    if code == 250:
                        acked[QUEUED.match(text.decode()).group(1)] = f"c{c}-m{n}"
                    else:
                        errors.append(f"c{c}-m{n}: {code} {text!r}")
        threads = [threading.Thread(target=client, args=(c,), daemon=True)
                   for c in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual(errors, [])
        return acked


class WorkersSubmissionTests(WorkersBase):
    @defer.inlineCallbacks
    def test_both_processes_serve_and_each_message_is_stored_once(self):
        acked = self.submit_all()
        self.assertEqual(len(acked), CLIENTS * MESSAGES_PER_CLIENT)

        store = open_store(self.url, reactor)
        yield store.start()
        self.addCleanup(store.close)
        entries = yield store.list_entries()
        tokens = [entry.token for entry in entries]
        self.assertEqual(sorted(tokens), sorted(acked))  # each once, nothing else

        for token in acked:  # log lines are written a few at a time (mailgw.logs)
            log = self.wait_for_log(f"queued as {token}")
        served = {"twistd": 0, "worker 1": 0}
        for token in acked:
            line = next(line for line in log.splitlines() if f"queued as {token}" in line)
            served["worker 1" if "] worker 1: [" in line else "twistd"] += 1
        self.assertGreater(served["twistd"], 0, served)
        self.assertGreater(served["worker 1"], 0, served)


class WorkersLifecycleTests(WorkersBase):
    def test_sigterm_stops_every_process(self):
        twistd, worker = self.gateway.process.pid, self.worker_pid()
        with open(f"/proc/{worker}/stat") as f:
            self.assertEqual(int(f.read().rpartition(")")[2].split()[1]), twistd)  # its parent
        self.gateway.process.send_signal(signal.SIGTERM)
        self.assertEqual(self.gateway.process.wait(WAIT), -signal.SIGTERM)  # as twistd always ends on it
        log = self.wait_for_log("Server Shut Down.")
        self.assertIn(f"worker 1 (pid {worker}) stopped: exit status 0", log)
        self.assertIn("worker 1: mailgw stopped", log)
        self.assertTrue(gone(worker), f"worker {worker} is still there")
        self.assertTrue(gone(twistd))

    def test_a_killed_worker_is_started_again(self):
        first = self.worker_pid()
        os.kill(first, signal.SIGKILL)
        log = self.wait_for_log("worker 1: store open: accepting mail", 2)
        self.assertRegex(log, rf"worker 1 \(pid {first}\) ended unexpectedly after [0-9.]+ s: "
                              r"killed by signal 9 \(SIGKILL\); starting it again in 1 s")
        second = self.worker_pid(2)
        self.assertNotEqual(second, first)
        self.assertTrue(gone(first))
        self.gateway.process.send_signal(signal.SIGTERM)
        self.assertEqual(self.gateway.process.wait(WAIT), -signal.SIGTERM)  # as twistd always ends on it
        self.assertTrue(gone(second), f"worker {second} is still there")

    def test_a_worker_stops_when_twistd_is_killed(self):
        worker = self.worker_pid()
        os.kill(self.gateway.process.pid, signal.SIGKILL)
        self.gateway.process.wait(WAIT)
        deadline = time.monotonic() + WAIT
        while not gone(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertTrue(gone(worker), f"worker {worker} outlived twistd's process")


PostgresWorkersSubmissionTests = on_postgres(WorkersSubmissionTests)


class WorkersRelayTests(GatewayTestBase):
    """workers = 2 with the relay on, sending to the sink, and polling the
    queue only once a minute: what arrives within seconds was woken."""

    @defer.inlineCallbacks
    def setUp(self):
        self.sink = Sink()
        port = self.sink.listen(self)
        self.config_tables = "\n".join([
            "[server]", "workers = 2",
            "[relay]", "enabled = true", f'smarthost = "127.0.0.1:{port}"', 'tls = "none"',
            "poll_interval = 60"])
        yield GatewayTestBase.setUp(self)
        deadline = reactor.seconds() + WAIT
        while "worker 1: store open: accepting mail" not in self.gateway.log():
            self.assertLess(reactor.seconds(), deadline, self.gateway.log()[-3000:])
            yield task.deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def test_the_relay_sends_what_a_worker_took_at_once(self):
        def send_until_a_worker_took_one():
            tokens = []
            for _ in range(40):
                code, text = send_smtp(self.gateway.port(), self.key, MESSAGE)
                self.assertEqual(code, 250)
                tokens.append(QUEUED.match(text.decode()).group(1))
                deadline = time.monotonic() + WAIT  # lines come a few at a time
                while f"queued as {tokens[-1]}" not in (log := self.gateway.log()):
                    self.assertLess(time.monotonic(), deadline, log[-3000:])
                    time.sleep(0.05)
                if any("worker 1: [" in line and f"queued as {tokens[-1]}" in line
                       for line in log.splitlines()):
                    return tokens
            self.fail("no message went to the worker:\n" + self.gateway.log()[-3000:])
        tokens = yield threads.deferToThread(send_until_a_worker_took_one)
        # well before the relay's next poll (60 s)
        yield self.sink.wait_for(len(tokens)).addTimeout(15, reactor)
        deadline = reactor.seconds() + WAIT
        while True:  # settled, so that no delivery is under way at the stop
            entries = yield threads.deferToThread(self.queue)
            if sorted(e["token"] for e in entries if e["status"] == "sent") == sorted(tokens):
                break
            self.assertLess(reactor.seconds(), deadline, entries)
            yield task.deferLater(reactor, 0.1, lambda: None)
