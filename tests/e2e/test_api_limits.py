"""The HTTP API's connection cap per client address against the real
gateway: idle connections from one address beyond the cap are closed at once,
the ones within it are still served, and SMTP is not affected."""
from __future__ import annotations

import socket
import time
import urllib.request

from tests.e2e.test_operations import samples
from tests.e2e.test_submission import GatewayTestBase

CAP = 3


def read_response(sock) -> bytes:
    """One whole HTTP response (with a Content-Length) from C{sock}."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed mid-response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head


class APIConnectionCapTests(GatewayTestBase):
    config_tables = ('[http_api]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
                     f"max_connections_per_ip = {CAP}\nidle_timeout = 60\n")

    def connect(self, port):
        sock = socket.create_connection(("127.0.0.1", port), 10)
        self.addCleanup(sock.close)
        return sock

    def test_idle_connections_over_the_per_address_cap_are_closed(self):
        held = [self.connect(self.gateway.api_port) for _ in range(CAP)]
        for _ in range(2):
            extra = self.connect(self.gateway.api_port)
            self.assertEqual(extra.recv(1), b"", "closed at once, without a word")
        # the connections within the cap are still served, and kept alive
        for sock in held:
            sock.sendall(b"GET /nothing HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            self.assertTrue(read_response(sock).startswith(b"HTTP/1.1 404 "))
        # SMTP does not share the API's caps
        smtp = self.connect(self.gateway.port())
        self.assertTrue(smtp.makefile("rb").readline().startswith(b"220 mx.e2e.test ESMTP"))
        url = f"http://127.0.0.1:{self.gateway.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            found = samples(response.read().decode())
        self.assertEqual(found[("mailgw_http_refused_connections_total",
                                (("reason", "too many connections from address"),))], 2)
        self.gateway.stop()
        deadline = time.monotonic() + 10
        while self.gateway.log().count("refused: too many connections from address") < 2:
            self.assertLess(time.monotonic(), deadline, self.gateway.log())
            time.sleep(0.05)  # the log is copied from the gateway's output by a thread
        self.assertIn("HTTP API: connection from 127.0.0.1 refused", self.gateway.log())
