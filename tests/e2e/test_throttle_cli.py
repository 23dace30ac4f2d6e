"""End to end: a brute force against the real ``twistd mailgw`` locks the
client out; the real ``mailgw throttle list`` shows the lock-out and ``mailgw
throttle clear`` lifts it on the running gateway within a few seconds
(docs/operations.md). On SQLite with one node, and on PostgreSQL with two
nodes cleared by one command."""
from __future__ import annotations

import base64
import functools
import os
import socket
import time

from tests.e2e.gateway import Gateway, mailgw_cli, write_config
from tests.e2e.test_submission import GatewayTestBase

LOCKED = b"421 mx.e2e.test Too many authentication failures, try again later"
#: loopback is not exempt here, so the tests' own address can be locked out
THROTTLE = "[auth_throttle]\nmax_failures = 3\nwindow = 600\nlockout = 900\n"
#: the longest the clear may take to reach a node: it polls every second
CLEAR_DEADLINE = 10.0
POLL_STEP = 0.2


def plain(key: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(b"\0any\0" + key.encode()) + b"\r\n"


class Client:
    """A raw SMTP connection reading one reply line at a time."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), 10)
        self.stream = self.sock.makefile("rb")
        self.greeting = self.stream.readline().rstrip(b"\r\n")

    def command(self, line: bytes) -> bytes:
        """Send C{line}; the last line of its reply."""
        self.sock.sendall(line)
        while True:
            reply = self.stream.readline()
            if reply[3:4] != b"-":
                return reply.rstrip(b"\r\n")

    def close(self):
        self.stream.close()
        self.sock.close()


class ThrottleGatewayBase(GatewayTestBase):
    config_tables = THROTTLE

    def greeting(self, port: int) -> bytes:
        client = Client(port)
        client.close()
        return client.greeting

    def greets(self, port: int) -> bool:
        """Does a new connection get the 220 greeting?"""
        return self.greeting(port).startswith(b"220 ")

    def brute_force(self, port: int) -> None:
        """Wrong keys until the gateway locks this address out."""
        client = Client(port)
        self.addCleanup(client.close)
        self.assertTrue(client.greeting.startswith(b"220 "), client.greeting)
        self.assertTrue(client.command(b"EHLO attacker.example\r\n").startswith(b"250 "))
        replies = [client.command(plain(f"Wrong{i:019d}")) for i in range(3)]
        self.assertEqual(replies, [b"535 Invalid credential"] * 2 + [LOCKED])
        self.assertEqual(client.stream.readline(), b"")  # closed by the gateway

    def eventually(self, check, what: str, deadline: float = CLEAR_DEADLINE):
        """Poll C{check} every L{POLL_STEP} seconds until it answers
        something true; fail after C{deadline} seconds."""
        end = time.monotonic() + deadline
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > end:
                self.fail(f"{what}: not within {deadline:g} s")
            time.sleep(POLL_STEP)

    def lockouts(self):
        return mailgw_cli(self.config, "throttle", "list", "--json")

    def authenticates(self, port: int) -> None:
        client = Client(port)
        self.addCleanup(client.close)
        self.assertTrue(client.greeting.startswith(b"220 "), client.greeting)
        client.command(b"EHLO client.example\r\n")
        self.assertEqual(client.command(plain(self.key)), b"235 Granted for acme/web")
        self.assertEqual(client.command(b"QUIT\r\n")[:3], b"221")


class ThrottleClearTests(ThrottleGatewayBase):
    def test_brute_force_is_listed_then_cleared_on_the_running_gateway(self):
        port = self.gateway.port()
        self.brute_force(port)
        self.assertEqual(self.greeting(port), LOCKED)

        rows = self.eventually(self.lockouts, "the lock-out on the notice board")
        self.assertEqual([(r["address"], r["kind"], r["failures"]) for r in rows],
                         [("127.0.0.1", "key", 3)])
        self.assertRegex(rows[0]["node"], r"/\d+$")

        cleared = mailgw_cli(self.config, "throttle", "clear", "127.0.0.1", "--json")
        self.assertEqual(cleared, {"cleared": "127.0.0.1", "lockouts_removed": 1})
        self.assertEqual(self.lockouts(), [])
        self.eventually(functools.partial(self.greets, port), "a greeting after the clear")
        self.authenticates(port)
        # info lines reach the file within a tenth of a second (mailgw.logs)
        self.eventually(lambda: "throttle cleared for 127.0.0.1 by the operator: forgotten "
                        "by the key throttle" in self.gateway.log(), "the clear in the log")


class TwoNodeThrottleClearTests(ThrottleGatewayBase):
    """Two nodes on one PostgreSQL database: each counts and locks on its
    own, and one clear reaches both."""

    engine = "postgresql"

    def setUp(self):
        d = super().setUp()

        def second_node(_):
            folder = os.path.join(self.folder, "node2")
            os.makedirs(folder)
            config = write_config(folder, database_url=self.url, listeners=self.listeners,
                                  tables=THROTTLE)
            self.node2 = Gateway(folder, config)
            self.addCleanup(self.node2.stop)
            self.node2.start(1)
        return d.addCallback(second_node)

    def test_one_clear_reaches_every_node(self):
        ports = [self.gateway.port(), self.node2.port()]
        self.brute_force(ports[0])
        self.assertEqual(self.greeting(ports[0]), LOCKED)
        # counts are per node: the other one still greets this address
        self.assertTrue(self.greets(ports[1]))
        self.brute_force(ports[1])

        rows = self.eventually(lambda: len(self.lockouts()) == 2 and self.lockouts(),
                               "both nodes' lock-outs on the notice board")
        self.assertEqual({r["address"] for r in rows}, {"127.0.0.1"})
        self.assertEqual(len({r["node"] for r in rows}), 2)

        cleared = mailgw_cli(self.config, "throttle", "clear", "127.0.0.1", "--json")
        self.assertEqual(cleared, {"cleared": "127.0.0.1", "lockouts_removed": 2})
        for port in ports:
            self.eventually(functools.partial(self.greets, port),
                            f"a greeting from port {port} after the clear")
            self.authenticates(port)

    def test_a_stopped_node_takes_its_lockouts_with_it(self):
        self.brute_force(self.node2.port())
        self.eventually(self.lockouts, "the lock-out on the notice board")
        self.node2.stop()
        self.assertEqual(self.lockouts(), [])
