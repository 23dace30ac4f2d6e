"""The README's quick start as a user runs it: ``make run``'s development
setup, then the client lines it prints (swaks, Python, curl for the HTTP
API), each run ten times in a row against the real gateway, checking the
development certificate rather than skipping the check."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

from twisted.trial import unittest

from mailgw.admin.devsetup import CONFIG_TEMPLATE
from tests.e2e.gateway import ROOT, Gateway, mailgw_cli, require_tool
from tests.e2e.test_startup import free_port

RUNS = 10


class PrintedLinesTests(unittest.TestCase):
    def setUp(self):
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.folder, "var"))
        # make run's own config, on ports free here (the lines print what it says)
        config = CONFIG_TEMPLATE
        for port in ("2525", "2465", "9091", "8025", "8080"):
            config = config.replace(f"tcp:{port}:", f"tcp:{free_port()}:")
        self.config = os.path.join(self.folder, "var", "mailgw.toml")
        with open(self.config, "w") as f:
            f.write(config)
        setup = subprocess.run(
            [sys.executable, "-m", "mailgw.admin.devsetup", "--config", "var/mailgw.toml"],
            cwd=self.folder, capture_output=True, text=True, timeout=120,
            env=dict(os.environ, PYTHONPATH=ROOT))
        self.assertEqual(setup.returncode, 0, setup.stderr)
        self.printed = setup.stdout
        self.gateway = Gateway(os.path.join(self.folder, "var"), self.config, http_api=True)
        self.addCleanup(self.gateway.stop)
        self.gateway.start(2)

    def line(self, program: str) -> list[str]:
        [line] = [ln.strip() for ln in self.printed.splitlines()
                  if ln.strip().startswith(program + " ")]
        return shlex.split(line)

    def run_times(self, argv: list[str], expect: str):
        for n in range(RUNS):
            result = subprocess.run(argv, cwd=self.folder, capture_output=True, text=True,
                                    timeout=60)
            output = result.stdout + result.stderr
            self.assertEqual(result.returncode, 0, f"run {n + 1}: {output}")
            self.assertIn(expect, output, f"run {n + 1}")

    def test_swaks_python_and_curl_ten_times_each(self):
        swaks = self.line("swaks")
        swaks[0] = require_tool("swaks")
        self.run_times(swaks, "250 OK: queued as ")
        self.run_times(self.line("python3"), "")
        curl = self.line("curl")
        curl[0] = require_tool("curl")
        self.run_times(curl, '"status": "success"')
        queue = mailgw_cli(self.config, "queue", "list", "--json")
        self.assertEqual(len(queue), 3 * RUNS)
        self.assertNotIn("Authentication failure for", self.gateway.log())
