"""The load generator of ``make bench``, run tiny: a few messages through
STARTTLS + AUTH PLAIN against the real ``twistd mailgw`` and the aiosmtpd
baseline, every scenario once, over loopback only."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def require_aiosmtpd():
    if importlib.util.find_spec("aiosmtpd") is None:
        message = "aiosmtpd is not installed (pip install -e '.[bench]')"
        if os.environ.get("CI") == "true":
            raise AssertionError(message + " (CI=true: a missing tool fails the test)")
        raise unittest.SkipTest(message)


class BenchSmokeTest(unittest.TestCase):
    timeout = 300

    def test_every_scenario_against_both_servers(self):
        require_aiosmtpd()
        report = os.path.abspath(self.mktemp()) + ".json"
        result = subprocess.run(
            [sys.executable, "-m", "bench.run", "--smoke", "--json", report],
            cwd=ROOT, capture_output=True, timeout=240, stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=ROOT))
        output = (result.stdout + result.stderr).decode("utf-8", "replace")
        self.assertEqual(result.returncode, 0, output)
        with open(report) as f:
            report = json.load(f)
        rows = report["rows"]
        # (e): every message relayed to the sink, signed only with DKIM on
        self.assertEqual([(r["dkim"], r["messages"], r["delivered"], r["signed"], r["errors"])
                          for r in report["relay"]],
                         [(True, 4, 4, 4, 0), (False, 4, 4, 0, 0)], output)
        self.assertIn("| mailgw, DKIM on |", output)
        # (f): every /send/raw answered success
        self.assertEqual((report["http_api"]["messages"], report["http_api"]["errors"]), (4, 0),
                         output)
        seen = {(row["scenario"][:4].strip(), row["server"]): row for row in rows}
        servers = ["mailgw", "aiosmtpd"]
        for optional, what in (("haraka", "Haraka (npm)"), ("mailgw-pg", "PostgreSQL")):
            if ("(a)", optional) in seen:
                servers.append(optional)
            elif os.environ.get("CI") == "true":
                self.fail(f"CI=true: {what} must be measured too\n" + output)
        for server in servers:
            for scenario, messages in (("(a)", 4), ("(b)", 2), ("(c)", 1)):
                row = seen[scenario, server]
                self.assertEqual((row["errors"], row["messages"]), (0, messages),
                                 f"{scenario} {server}: {row['error_samples']}\n{output}")
                self.assertIsNotNone(row["p99"])
                self.assertGreater(row["server_cpu"] + row["peak_rss_kb"], 0)
            for scenario, connections in (("(d)", 10), ("(d')", 4)):
                row = seen[scenario, server]
                self.assertEqual((row["errors"], row["connections"]), (0, connections),
                                 f"{scenario} {server}: {row['error_samples']}")
        verdicts = re.findall(r"^(?:PASS|FAIL)  \(([a-d])\)", output, re.MULTILINE)
        expected = ["a", "a", "a", "b", "c", "d"] + (["a"] if "mailgw-pg" in servers else [])
        self.assertEqual(sorted(verdicts), sorted(expected), output)
        self.assertIn("| (a)", output)
