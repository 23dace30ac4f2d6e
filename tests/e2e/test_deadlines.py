"""Deadlines and envelope limits against the real gateway over real sockets
(docs/smtp.md §2, §9): a client trickling a command or its message data is
cut off although it keeps sending; the header-section limit, address
literals and the recipient limit as a client meets them."""
from __future__ import annotations

import base64
import smtplib
import socket
import time

from tests.e2e.test_submission import GatewayTestBase

TIMEOUT = b"421 mx.e2e.test Timeout, closing connection\r\n"


class SlowlorisTests(GatewayTestBase):
    listeners = [{"endpoint": "tcp:0:interface=127.0.0.1", "tls": "none",
                  "idle_timeout": 1, "data_timeout": 1, "min_data_rate": 1024}]

    def trickle(self, sock, data: bytes, pause: float, limit: float) -> tuple[bytes, float]:
        """Send C{data} a byte every C{pause} s until the server closes; what
        it said and when, counted from the first byte."""
        sock.setblocking(False)
        started, said = time.monotonic(), b""
        for byte in data:
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            end = time.monotonic() + pause
            while time.monotonic() < end:
                try:
                    chunk = sock.recv(4096)
                except BlockingIOError:
                    time.sleep(0.02)
                    continue
                if not chunk:
                    return said, time.monotonic() - started
                said += chunk
            self.assertLess(time.monotonic() - started, limit, said)
        return said, time.monotonic() - started

    def test_a_command_a_byte_at_a_time(self):
        with socket.create_connection(("127.0.0.1", self.gateway.port()), 10) as sock:
            self.assertTrue(sock.recv(1024).startswith(b"220 "))
            said, took = self.trickle(sock, b"N" * 100, 0.2, limit=5)
        self.assertEqual(said, TIMEOUT)
        self.assertLess(took, 2.5)  # 1 s from the first byte, not from the last one

    def test_message_data_a_byte_at_a_time(self):
        with socket.create_connection(("127.0.0.1", self.gateway.port()), 10) as sock:
            stream = sock.makefile("rb")
            stream.readline()
            sock.sendall(b"EHLO slow.example\r\nAUTH PLAIN " + self.plain() + b"\r\n"
                         b"MAIL FROM:<app@good.example>\r\nRCPT TO:<user@dest.example>\r\n"
                         b"DATA\r\n")
            lines = []
            while not lines or not lines[-1].startswith(b"354"):
                lines.append(stream.readline())
            said, took = self.trickle(sock, b"X" * 200, 0.2, limit=6)
        self.assertEqual(said, TIMEOUT)
        self.assertLess(took, 3.0)  # data_timeout + its bytes at 1024 B/s
        self.assertEqual(self.queue(), [])

    def plain(self) -> bytes:
        return base64.b64encode(b"\0app\0" + self.key.encode())


class EnvelopeAndHeaderLimitTests(GatewayTestBase):
    listeners = [{"endpoint": "tcp:0:interface=127.0.0.1", "tls": "none"}]

    def test_header_section_limit_literals_and_repeats(self):
        with smtplib.SMTP("127.0.0.1", self.gateway.port(), timeout=30) as client:
            client.ehlo("c.example")
            client.login("any", self.key)
            client.mail("app@good.example")
            self.assertEqual(client.rcpt("postmaster@[127.0.0.1]"),
                             (553, b"Address literals are not accepted"))
            self.assertEqual(client.rcpt("user@dest.example")[0], 250)
            self.assertEqual(client.rcpt("user@DEST.example")[0], 250)
            pad = b"".join(b"X-Pad: %07d\r\n" % i for i in range(1100 * 1024 // 16))
            code, text = client.data(b"From: app@good.example\r\n" + pad + b"\r\nbody\r\n")
            self.assertEqual((code, text),
                             (552, b"Header section too large (maximum size 1024KB)"))
            client.mail("app@good.example")
            client.rcpt("user@dest.example")
            client.rcpt("user@DEST.example")
            code, _ = client.data(b"From: app@good.example\r\nSubject: ok\r\n\r\nbody\r\n")
            self.assertEqual(code, 250)
        self.assertEqual([e["rcpt_to"] for e in self.queue()], ["user@dest.example"])
        log = self.gateway.log()
        self.assertIn("recipient refused: address literal postmaster@[127.0.0.1]", log)
        self.assertIn("message refused: header section too large", log)
