"""Starting the real gateway as an operator does (docs/deployment.md): a start
that cannot work says why in one line, with no traceback, and exits non-zero
(systemd must see the failure); and as root with ``twistd -u``, the
listeners bind privileged ports before the switch to the unprivileged user,
which then owns everything the gateway writes."""
from __future__ import annotations

import os
import pwd
import re
import grp
import shutil
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time

from twisted.trial import unittest

from mailgw.admin.devsetup import make_certificate
from tests.e2e.gateway import ROOT, Gateway, _twistd, write_config


def free_port(low=False) -> int:
    """A port nothing listens on (below 1024 when C{low})."""
    candidates = list(range(587, 1024)) if low else [0]
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise AssertionError("no free port")


class FailedStartTests(unittest.TestCase):
    def run_gateway(self, listeners, database_url=None, prepare=None):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        if prepare is not None:
            prepare(folder)
        url = database_url or "sqlite:" + os.path.join(folder, "db.sqlite3")
        config = write_config(folder, database_url=url, listeners=listeners)
        result = subprocess.run(
            _twistd() + ["-n", "--pidfile=", "mailgw", "--config", config], cwd=folder,
            capture_output=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
        output = (result.stdout + result.stderr).decode("utf-8", "replace")
        self.assertNotEqual(result.returncode, 0, output)
        self.assertNotIn("Traceback", output)
        return output

    def test_endpoint_typo(self):
        output = self.run_gateway([{"endpoint": "tcp:0:interfce=127.0.0.1"}])
        self.assertIn("mailgw: listeners[0].endpoint: cannot use 'tcp:0:interfce=127.0.0.1'",
                      output)

    def test_port_in_use(self):
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        output = self.run_gateway([{"endpoint": f"tcp:{port}:interface=127.0.0.1"}])
        self.assertIn(f"mailgw: listeners[0].endpoint: cannot listen on "
                      f"'tcp:{port}:interface=127.0.0.1'", output)

    def test_bad_interface(self):
        output = self.run_gateway([{"endpoint": "tcp:0:interface=192.0.2.254"}])
        self.assertIn("mailgw: listeners[0].endpoint: cannot listen on", output)

    def test_spool_is_not_a_folder(self):
        def spool_file(folder):
            with open(os.path.join(folder, "spool"), "w") as f:
                f.write("not a folder")
        output = self.run_gateway([{"endpoint": "tcp:0:interface=127.0.0.1"}],
                                  prepare=spool_file)
        self.assertIn("mailgw: cannot use the spool directory ", output)

    def test_database_down(self):
        port = free_port()
        url = f"postgresql://mailgw:secret@127.0.0.1:{port}/mailgw"
        output = self.run_gateway([{"endpoint": "tcp:0:interface=127.0.0.1"}], url)
        self.assertIn(f"mailgw: cannot open the store postgresql://mailgw:***@127.0.0.1:{port}"
                      "/mailgw", output)
        self.assertNotIn("secret", output)


class PrivilegeDropTests(unittest.TestCase):
    """As root: ``twistd -u nobody -g nogroup`` on real low ports."""

    def setUp(self):
        if os.geteuid() != 0:
            if os.environ.get("CI") == "true":
                raise AssertionError("CI runs as root: this test must run")
            raise unittest.SkipTest("needs root to bind low ports and switch user")
        self.user = pwd.getpwnam("nobody")
        self.group = grp.getgrnam("nogroup")

    def start_gateway(self, tables: str = ""):
        """The gateway on two free low ports, its key readable by root only.

        @return: the running L{Gateway}, the TLS folder and the two ports.
        """
        # Not under _trial_temp: its folders are 0700, closed to the user.
        folder = tempfile.mkdtemp(prefix="mailgw-privdrop-")
        os.chmod(folder, 0o755)
        cert, key = make_certificate("localhost")
        tls = os.path.join(folder, "tls")
        os.makedirs(tls)
        for name, data in (("cert.pem", cert), ("key.pem", key)):
            with open(os.path.join(tls, name), "wb") as f:
                f.write(data)
        os.chmod(tls, 0o700)  # only root reads the key: it is read before the switch
        starttls, implicit = free_port(low=True), None
        with socket.socket() as hold:  # a second, different free low port
            hold.bind(("127.0.0.1", starttls))
            implicit = free_port(low=True)
        config = write_config(
            folder, database_url="sqlite:" + os.path.join(folder, "data", "db.sqlite3"),
            listeners=[{"endpoint": f"tcp:{starttls}:interface=127.0.0.1", "tls": "starttls"},
                       {"endpoint": f"tcp:{implicit}:interface=127.0.0.1", "tls": "implicit"}],
            tls={"certificate": os.path.join(tls, "cert.pem"),
                 "private_key": os.path.join(tls, "key.pem")}, tables=tables)
        data = os.path.join(folder, "data")
        os.makedirs(data)
        os.chown(data, self.user.pw_uid, self.group.gr_gid)
        os.chown(folder, self.user.pw_uid, self.group.gr_gid)  # the spool is made here
        self.addCleanup(shutil.rmtree, folder, True)
        gateway = Gateway(folder, config, twistd_args=("--uid", "nobody", "--gid", "nogroup"))
        self.addCleanup(gateway.stop)
        gateway.start(2)
        return gateway, folder, tls, starttls, implicit

    def test_low_ports_then_unprivileged(self):
        gateway, folder, tls, starttls, implicit = self.start_gateway()
        data = os.path.join(folder, "data")
        self.assertEqual(sorted(p for _, p in gateway.ports), sorted([starttls, implicit]))
        with open(f"/proc/{gateway.process.pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        self.assertEqual({int(u) for u in uids}, {self.user.pw_uid})
        self.assertEqual(os.stat(os.path.join(folder, "spool")).st_uid, self.user.pw_uid)
        self.assertEqual(os.stat(os.path.join(data, "db.sqlite3")).st_uid, self.user.pw_uid)
        context = ssl.create_default_context(cafile=os.path.join(tls, "cert.pem"))
        with smtplib.SMTP_SSL("localhost", implicit, context=context, timeout=30) as client:
            self.assertEqual(client.ehlo()[0], 250)
        with smtplib.SMTP("localhost", starttls, timeout=30) as client:
            client.starttls(context=context)
            self.assertEqual(client.ehlo()[0], 250)

    def test_workers_after_the_switch(self):
        """With [server] workers = 2 the worker is started as the user, serves
        the low ports twistd bound, and the key only root may read."""
        gateway, _, tls, starttls, implicit = self.start_gateway("[server]\nworkers = 2")
        deadline = time.monotonic() + 20
        while "worker 1: store open: accepting mail" not in gateway.log():
            self.assertLess(time.monotonic(), deadline, gateway.log())
            time.sleep(0.05)
        pid = int(re.search(r"worker 1 started \(pid (\d+)\)", gateway.log()).group(1))
        with open(f"/proc/{pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        self.assertEqual({int(u) for u in uids}, {self.user.pw_uid})
        context = ssl.create_default_context(cafile=os.path.join(tls, "cert.pem"))
        for _ in range(8):  # new connections, to whichever process takes them
            with smtplib.SMTP_SSL("localhost", implicit, context=context, timeout=30) as client:
                self.assertEqual(client.ehlo()[0], 250)
            with smtplib.SMTP("localhost", starttls, timeout=30) as client:
                client.starttls(context=context)
                self.assertEqual(client.ehlo()[0], 250)
        self.assertNotIn("could not", gateway.log())
