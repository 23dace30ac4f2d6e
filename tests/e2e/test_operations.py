"""Operating the real gateway: /health and /metrics (parsed with
prometheus_client's parser), and a graceful shutdown on SIGTERM that lets a
transaction in flight finish and tells idle sessions 421."""
from __future__ import annotations

import base64
import signal
import smtplib
import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_submission import MESSAGE, GatewayTestBase


def samples(text):
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class MetricsTests(GatewayTestBase):
    def get(self, path):
        url = f"http://127.0.0.1:{self.gateway.metrics_port}{path}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()

    def test_health_and_metrics_after_one_message(self):
        self.assertEqual(self.get("/health"), (200, "ok\n"))
        client = smtplib.SMTP("127.0.0.1", self.gateway.port(), timeout=30)
        client.login("any", self.key)
        client.sendmail("app@good.example", ["user@dest.example"], MESSAGE)
        client.quit()
        status, text = self.get("/metrics")
        self.assertEqual(status, 200)
        found = samples(text)
        self.assertEqual(found[("mailgw_messages_total",
                                (("reason", "queued"), ("result", "accepted")))], 1)
        self.assertEqual(found[("mailgw_smtp_auth_total",
                                (("mechanism", "PLAIN"), ("result", "success")))], 1)
        self.assertEqual(found[("mailgw_queue_entries", (("status", "queued"),))], 1)
        self.assertEqual(found[("mailgw_smtp_commands_total", (("verb", "DATA"),))], 1)
        self.assertGreaterEqual(found[("mailgw_smtp_connections_total", ())], 1)
        self.assertGreaterEqual(
            found[("mailgw_store_seconds_count", (("operation", "enqueue"),))], 1)


class ShutdownTests(GatewayTestBase):
    def session(self):
        sock = socket.create_connection(("127.0.0.1", self.gateway.port()), 30)
        self.addCleanup(sock.close)
        stream = sock.makefile("rb")
        self.assertTrue(stream.readline().startswith(b"220 "))
        return sock, stream

    def test_sigterm_drains_sessions(self):
        idle, idle_stream = self.session()
        busy, busy_stream = self.session()
        auth = base64.b64encode(b"\0u\0" + self.key.encode())
        busy.sendall(b"HELO c\r\nAUTH PLAIN " + auth + b"\r\nMAIL FROM:<app@good.example>\r\n"
                     b"RCPT TO:<user@dest.example>\r\nDATA\r\n")
        replies = [busy_stream.readline() for _ in range(5)]
        self.assertEqual(replies[-1], b"354 Go ahead\r\n")
        busy.sendall(MESSAGE[:40])
        self.gateway.process.send_signal(signal.SIGTERM)
        self.assertEqual(idle_stream.readline(),
                         b"421 mx.e2e.test Service shutting down\r\n")
        self.assertEqual(idle_stream.readline(), b"")
        busy.sendall(MESSAGE[40:] + b".\r\n")
        self.assertRegex(busy_stream.readline(), rb"^250 OK: queued as [A-Z0-9]{12}\r\n$")
        self.assertEqual(busy_stream.readline(),
                         b"421 mx.e2e.test Service shutting down\r\n")
        # twistd exits by the signal it was stopped with, after a clean stop
        self.assertIn(self.gateway.process.wait(30), (0, -signal.SIGTERM))
        self.assertIn("mailgw stopped", self.gateway.log())
        [entry] = self.queue()
        self.assertEqual(entry["rcpt_to"], "user@dest.example")


class JSONLogTests(GatewayTestBase):
    gateway_args = ("--log-format", "json")

    def test_every_line_is_json_with_trace_ids(self):
        import json
        client = smtplib.SMTP("127.0.0.1", self.gateway.port(), timeout=30)
        client.ehlo("json.client")
        client.user, client.password = "any", "NotTheKey000000000000000"
        with self.assertRaises(smtplib.SMTPAuthenticationError):
            client.auth("PLAIN", client.auth_plain)
        client.quit()
        self.gateway.stop()
        records = [json.loads(line) for line in self.gateway.log().splitlines() if line]
        self.assertTrue(all({"time", "level", "namespace", "message"} <= r.keys()
                            for r in records))
        [failure] = [r for r in records if r["message"].endswith(
            'Authentication failure for 127.0.0.1 (PLAIN, user "any")')]
        self.assertRegex(failure["trace"], r"^[A-Z0-9]{8}$")
        self.assertEqual(failure["level"], "warn")
        self.assertTrue(any(r["message"].startswith("listening on ") for r in records))
        self.assertNotIn("NotTheKey", self.gateway.log())


class Fail2banFilterTests(GatewayTestBase):
    def test_filter_matches_the_real_log_line(self):
        import configparser
        import os
        import re
        from tests.e2e.gateway import ROOT
        parser = configparser.RawConfigParser()
        parser.read(os.path.join(ROOT, "etc", "fail2ban", "filter.d", "mailgw.conf"))
        failregex = parser.get("Definition", "failregex").strip()
        pattern = re.compile(failregex.replace("<HOST>", r"(?P<host>[0-9a-fA-F.:]+)"))
        client = smtplib.SMTP("127.0.0.1", self.gateway.port(), timeout=30)
        client.ehlo("f2b.client")
        client.user, client.password = "any", "WrongKey"
        with self.assertRaises(smtplib.SMTPAuthenticationError):
            client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        client.quit()
        self.gateway.stop()
        hosts = [m.group("host") for line in self.gateway.log().splitlines()
                 for m in [pattern.search(line)] if m]
        self.assertEqual(hosts, ["127.0.0.1"])


class HTTPAPIEndToEndTests(GatewayTestBase):
    """The send API through the real twistd: wired, listening, queueing."""
    config_tables = '[http_api]\nendpoint = "tcp:0:interface=127.0.0.1"\n'

    def test_send_raw_through_the_gateway(self):
        from tests.e2e.gateway import mailgw_cli, send_raw
        key = mailgw_cli(self.config, "credential", "add", "acme/web", "--type", "api",
                         "--json")["key"]
        answer = send_raw(self.gateway.api_port, key, MESSAGE)
        self.assertEqual(answer["status"], "success", answer)
        [entry] = self.queue()
        self.assertEqual(entry["id"], answer["data"]["messages"]["user@dest.example"]["id"])
        raw = mailgw_cli(self.config, "queue", "show", str(entry["id"]), "--raw", raw=True)
        self.assertIn(b" with HTTP id ", raw.split(b"\r\n")[0])
        url = f"http://127.0.0.1:{self.gateway.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            found = samples(response.read().decode())
        self.assertEqual(found[("mailgw_messages_total",
                                (("reason", "queued"), ("result", "accepted")))], 1)
