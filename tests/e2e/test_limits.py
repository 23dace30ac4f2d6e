"""PROXY protocol, connection caps and timeouts against the real gateway,
with real clients (swaks --proxy, raw sockets) and short limits."""
from __future__ import annotations

import re
import socket
import subprocess

from tests.e2e.gateway import mailgw_cli, require_tool
from tests.e2e.test_submission import GatewayTestBase


class ProxyProtocolTests(GatewayTestBase):
    listeners = [{"endpoint": "tcp:0:interface=127.0.0.1", "tls": "none",
                  "proxy_protocol": True, "trusted_proxies": ["127.0.0.0/8"]}]

    def test_swaks_proxy_v1_and_v2_authorise_by_proxied_address(self):
        swaks = require_tool("swaks")
        mailgw_cli(self.config, "credential", "add", "acme/web", "--type", "smtp-ip",
                   "--key", "198.51.100.0/24", "--json")
        for version in ("1", "2"):
            result = subprocess.run(
                [swaks, "--server", "127.0.0.1", "--port", str(self.gateway.port()),
                 "--proxy-version", version, "--proxy-family",
                 "TCP4" if version == "1" else "AF_INET", "--proxy-protocol", "STREAM",
                 "--proxy-source", "198.51.100.9", "--proxy-source-port", "40000",
                 "--proxy-dest", "127.0.0.1", "--proxy-dest-port", "25",
                 "--from", "app@good.example", "--to", "user@dest.example",
                 "--header", "From: app@good.example"],
                capture_output=True, timeout=60)
            output = result.stdout.decode("utf-8", "replace")
            self.assertEqual(result.returncode, 0, output)
            token = re.search(r"<-  250 OK: queued as ([A-Z0-9]{12})", output).group(1)
            raw_entries = [e for e in self.queue() if e["token"] == token]
            self.assertEqual(len(raw_entries), 1)
            raw = mailgw_cli(self.config, "queue", "show", str(raw_entries[0]["id"]), "--raw",
                             raw=True)
            self.assertIn(b"(198.51.100.9 [198.51.100.9])", raw.split(b"\r\n")[0])

    def test_no_header_is_refused(self):
        with socket.create_connection(("127.0.0.1", self.gateway.port()), 10) as sock:
            sock.sendall(b"EHLO direct\r\n")
            self.assertEqual(sock.recv(100), b"502 Proxy Error\r\n")
            self.assertEqual(sock.recv(100), b"")


class ConnectionLimitTests(GatewayTestBase):
    listeners = [{"endpoint": "tcp:0:interface=127.0.0.1", "tls": "none",
                  "max_connections_per_ip": 1, "idle_timeout": 1}]

    def test_per_address_cap_and_idle_timeout(self):
        first = socket.create_connection(("127.0.0.1", self.gateway.port()), 10)
        self.addCleanup(first.close)
        stream = first.makefile("rb")
        self.assertTrue(stream.readline().startswith(b"220 mx.e2e.test ESMTP"))
        with socket.create_connection(("127.0.0.1", self.gateway.port()), 10) as second:
            self.assertEqual(second.makefile("rb").readline(),
                             b"421 mx.e2e.test Too many connections, try again later\r\n")
        # the idle first connection is closed by the server after one second
        self.assertEqual(stream.readline(), b"421 mx.e2e.test Timeout, closing connection\r\n")
        self.assertEqual(stream.readline(), b"")
        with socket.create_connection(("127.0.0.1", self.gateway.port()), 10) as third:
            self.assertTrue(third.makefile("rb").readline().startswith(b"220 "))
