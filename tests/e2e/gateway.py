"""The real gateway for end-to-end tests: ``twistd -n mailgw`` in a child
process on loopback, with a throwaway config, waited for by its own log line
("listening on ... port N") rather than by sleeping."""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time

from twisted.trial.unittest import SkipTest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LISTENING = re.compile(r"listening on (\S+) at (\S+) port (\d+) \((?:tls=(\w+)|(metrics))")
HTTP_API = re.compile(r"HTTP API listening on \S+ at \S+ port (\d+)")
WEB = re.compile(r"web interface listening on \S+ at \S+ port (\d+)")
START_TIMEOUT = 30


def require_tool(name: str) -> str:
    """The path of an outside client; skip without it, fail under CI=true."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed"
    if os.environ.get("CI") == "true":
        raise AssertionError(message + " (CI=true: a missing tool fails the test)")
    raise SkipTest(message)


def _twistd() -> list[str]:
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def toml_value(value) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def write_config(folder: str, *, database_url: str, listeners: list[dict],
                 hostname="mx.e2e.test", tls=None, extra="", tables="") -> str:
    lines = [f"hostname = {toml_value(hostname)}", 'spool_directory = "spool"', extra,
             "[database]", f"url = {toml_value(database_url)}",
             "[metrics]", 'endpoint = "tcp:0:interface=127.0.0.1"']
    if tls:
        lines += ["[tls]"] + [f"{k} = {toml_value(v)}" for k, v in tls.items()]
    for listener in listeners:
        lines.append("[[listeners]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in listener.items()]
    if "[relay]" not in tables:
        # These tests look at the queue; nothing may be delivered from it.
        lines += ["[relay]", "enabled = false"]
    if "[dns]" not in tables:
        # No periodic look-ups of the test domains in the outside DNS.
        lines += ["[dns]", "check_interval = 0"]
    lines.append(tables)
    path = os.path.join(folder, "mailgw.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


class Gateway:
    """A running ``twistd -n mailgw``; C{ports} lists (tls mode, port) in
    listener order."""

    def __init__(self, folder: str, config_path: str, extra_args=(), http_api=False,
                 twistd_args=(), web=False):
        """
        @param web: wait for the web interface's listener too (its port in
            C{web_port}).
        @param extra_args: options of C{twistd mailgw} (after the plugin name).
        @param twistd_args: options of twistd itself (before it), e.g. C{--uid}.
        """
        self.extra_args = list(extra_args)
        self.twistd_args = list(twistd_args)
        self.api_port = None
        self._want_api = http_api
        self._want_web = web
        self.web_port = None
        self.folder = folder
        self.config_path = config_path
        self.ports = []
        self.log_path = os.path.join(folder, "twistd.log")
        self.process = None
        self._drainer = None  # the thread copying the child's output to the log

    def spawn(self) -> subprocess.Popen:
        """The gateway's process, its output (stdout and stderr) on a pipe."""
        return subprocess.Popen(
            _twistd() + ["-n", "--pidfile=", *self.twistd_args, "mailgw",
                         "--config", self.config_path]
            + self.extra_args,
            cwd=self.folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=ROOT))

    def start(self, expected_listeners: int):
        log = open(self.log_path, "ab")
        self.process = self.spawn()
        deadline = time.monotonic() + START_TIMEOUT
        buffer = b""
        self.metrics_port = None
        self.store_open = False
        while (len(self.ports) < expected_listeners or self.metrics_port is None
               or (self._want_api and self.api_port is None)
               or (self._want_web and self.web_port is None) or not self.store_open):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                self.stop()
                raise AssertionError("gateway did not start:\n" + self.log())
            ready, _, _ = select.select([self.process.stdout], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.process.stdout.fileno(), 65536)
            log.write(chunk)
            log.flush()
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace")
                # Listeners bind first; mail is accepted once the store is open.
                self.store_open = self.store_open or "store open: accepting mail" in text
                web = WEB.search(text)
                if web:
                    self.web_port = int(web.group(1))
                api = HTTP_API.search(text)
                if api:
                    self.api_port = int(api.group(1))
                m = LISTENING.search(text)
                if m and m.group(5):
                    self.metrics_port = int(m.group(3))
                elif m:
                    self.ports.append((m.group(4), int(m.group(3))))
        self._drain(log)
        return self

    def _drain(self, log):
        """Keep copying the child's output to the log file, so it never blocks."""
        import threading

        def copy():
            for chunk in iter(lambda: os.read(self.process.stdout.fileno(), 65536), b""):
                log.write(chunk)
                log.flush()
            log.close()
        self._drainer = threading.Thread(target=copy, daemon=True)
        self._drainer.start()

    def port(self, tls_mode: str = "none") -> int:
        return next(p for mode, p in self.ports if mode == tls_mode)

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        # the child's last lines are in the log file once the copy has ended
        if self._drainer is not None:
            self._drainer.join(10)


def mailgw_cli(config_path: str, *args: str, raw=False):
    """Run the real ``mailgw`` command; JSON-decoded stdout (or bytes with raw)."""
    command = [sys.executable, "-m", "mailgw.admin.cli", "--config", config_path, *args]
    result = subprocess.run(command, capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT),
                            timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"mailgw {' '.join(args)} failed: {result.stderr.decode()}")
    return result.stdout if raw else json.loads(result.stdout)


def send_raw(api_port: int, key: str, message: bytes, mail_from="app@good.example",
             rcpt_to=("user@dest.example",)) -> dict:
    """POST C{message} to the gateway's /api/v1/send/raw; the JSON answer."""
    import base64
    import urllib.request
    request = urllib.request.Request(
        f"http://127.0.0.1:{api_port}/api/v1/send/raw", method="POST",
        headers={"X-Server-API-Key": key, "Content-Type": "application/json"},
        data=json.dumps({"mail_from": mail_from, "rcpt_to": list(rcpt_to),
                         "data": base64.b64encode(message).decode()}).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def send_smtp(port: int, key: str, message: bytes, mail_from="app@good.example",
              rcpt_to=("user@dest.example",)) -> tuple[int, bytes]:
    """One message through the gateway's plain listener on C{port} with
    smtplib, AUTH with C{key}: the final dot's C{(code, text)}."""
    import smtplib
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        client.login("anyone", key)
        client.mail(mail_from)
        for rcpt in rcpt_to:
            client.rcpt(rcpt)
        code, text = client.data(message)
        client.quit()
    finally:
        client.close()
    return code, text
