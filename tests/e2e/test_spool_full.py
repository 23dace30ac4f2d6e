"""A full spool disk while DATA arrives, against the real gateway: the client
gets 452 Insufficient system storage, nothing is stored, and the same
session goes on to send the next message (docs/smtp.md §9). The spool is a
1 MiB tmpfs mounted for the test (root only)."""
from __future__ import annotations

import os
import smtplib
import subprocess

from twisted.trial import unittest

from tests.e2e.test_submission import GatewayTestBase

SMALL = b"From: app@good.example\r\nSubject: small\r\n\r\nfits\r\n"


def _mount_small_tmpfs(path: str) -> str | None:
    """Mount a 1 MiB tmpfs at C{path}; the reason it cannot be, or None."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", path],
                            capture_output=True, text=True)
    return None if result.returncode == 0 else f"mount failed: {result.stderr.strip()}"


class SpoolFullTests(GatewayTestBase):
    def database_url_for_test(self):
        # Called once the folder exists and before the gateway starts.
        spool = os.path.join(self.folder, "spool")
        os.makedirs(spool)
        problem = _mount_small_tmpfs(spool)
        if problem is not None:
            if os.environ.get("CI") == "true":
                raise AssertionError(problem + " (CI runs as root: this must work)")
            raise unittest.SkipTest(problem)
        self.addCleanup(subprocess.run, ["umount", "-l", spool], check=False)
        return super().database_url_for_test()

    def test_452_then_the_session_goes_on(self):
        client = smtplib.SMTP("127.0.0.1", self.gateway.port(), timeout=30)
        self.addCleanup(client.close)
        client.ehlo("c.example")
        client.login("any", self.key)
        big = SMALL + b"x" * 1022 + b"\r\n"
        big += (b"y" * 1022 + b"\r\n") * 3000  # 3 MB: past the 256 kB kept in memory
        client.mail("app@good.example")
        client.rcpt("user@dest.example")
        code, text = client.data(big)
        self.assertEqual((code, text), (452, b"Insufficient system storage"))
        client.mail("app@good.example")
        client.rcpt("user@dest.example")
        code, text = client.data(SMALL)
        self.assertEqual(code, 250, text)
        self.assertEqual([e["size"] > 3_000_000 for e in self.queue()], [False])
        self.assertIn("message refused: spool full", self.gateway.log())
