"""``python -m mailgw.admin.devsetup`` (the first step of ``make run``), run for
real in a temporary folder, and the example config in ``etc/``."""
from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import re
import shlex
import ssl
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.trial import unittest

from mailgw import config as config_module
from mailgw.config import load_config
from mailgw.store import open_store

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "mailgw.toml.example"
KEY_LINE = re.compile(r"^demo credential key \(server demo/main\): ([A-Za-z0-9]{24})$", re.M)


def devsetup(folder: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailgw.admin.devsetup", "--config", "var/mailgw.toml"],
        cwd=folder, capture_output=True, text=True, timeout=60)


def handshake(cafile: str, certificate: str, key: str, server_hostname: str) -> dict:
    """Verify the server certificate as a client trusting C{cafile} would, in memory."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certificate, key)
    client = ssl.create_default_context(cafile=cafile)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(5):
        for side in (c, s):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    return c.getpeercert()


@functools.cache
def first_run() -> tuple[str, subprocess.CompletedProcess]:
    """One first run in a fresh folder (under trial's working directory),
    shared by the tests of its results."""
    folder = os.path.abspath(tempfile.mkdtemp(prefix="devsetup-", dir="."))
    return folder, devsetup(folder)


class DevSetupTests(unittest.TestCase):
    def setUp(self):
        self.folder, self.first = first_run()
        self.var = os.path.join(self.folder, "var")

    def path(self, name: str) -> str:
        return os.path.join(self.var, name)

    def test_first_run_prints_the_key_and_command_lines(self):
        self.assertEqual((self.first.returncode, self.first.stderr), (0, ""))
        out = self.first.stdout
        self.assertIn("devsetup: wrote var/mailgw.toml\n", out)
        key = KEY_LINE.search(out).group(1)
        self.assertIn(f"  swaks --server 127.0.0.1:2525 --tls --tls-verify --tls-ca-path "
                      f"var/tls/cert.pem --auth PLAIN --auth-user any "
                      f"--auth-password {key} --from you@example.com "
                      f"--to someone@example.net\n", out)
        python_line = [ln for ln in out.splitlines() if ln.lstrip().startswith("python3 -c")]
        program, flag, code = shlex.split(python_line[0])
        self.assertEqual((program, flag), ("python3", "-c"))
        compile(code, "<one-liner>", "exec")
        self.assertIn(f's.login("any", "{key}")', code)
        self.assertIn('ssl.create_default_context(cafile="var/tls/cert.pem")', code)
        self.assertIn('smtplib.SMTP("127.0.0.1", 2525); s.starttls(context=c)', code)
        self.assertRegex(out, r"curl -sS http://127\.0\.0\.1:8025/api/v1/send/message "
                              r"-H 'X-Server-API-Key: [A-Za-z0-9]{24}'")

    def test_second_run_changes_nothing_and_prints_the_same_key(self):
        files = ["mailgw.toml", "tls/cert.pem", "tls/key.pem"]
        before = [Path(self.path(f)).read_bytes() for f in files]
        second = devsetup(self.folder)
        self.assertEqual((second.returncode, second.stderr), (0, ""))
        self.assertEqual([Path(self.path(f)).read_bytes() for f in files], before)
        self.assertEqual(KEY_LINE.search(second.stdout).group(1),
                         KEY_LINE.search(self.first.stdout).group(1))
        self.assertNotIn("wrote", second.stdout)
        self.assertNotIn("created", second.stdout)

    def test_config_loads(self):
        config = load_config(self.path("mailgw.toml"))
        var = os.path.realpath(self.var)
        self.assertEqual(config.hostname, "localhost")
        self.assertEqual(config.database.url, "sqlite:" + os.path.join(var, "mailgw.sqlite3"))
        self.assertEqual(config.spool_directory, os.path.join(var, "spool"))
        self.assertTrue(os.path.isdir(config.spool_directory))
        self.assertEqual((config.tls.certificate, config.tls.private_key),
                         (os.path.join(var, "tls/cert.pem"), os.path.join(var, "tls/key.pem")))
        self.assertEqual([(ls.endpoint, ls.tls, ls.auth_requires_tls) for ls in config.listeners],
                         [("tcp:2525:interface=127.0.0.1", "starttls", True),
                          ("tcp:2465:interface=127.0.0.1", "implicit", True)])
        self.assertIn("set this to false", Path(self.path("mailgw.toml")).read_text())

    def test_loopback_is_never_locked_out(self):
        from twisted.internet.task import Clock

        from mailgw.auth.throttle import FailureThrottle
        config = load_config(self.path("mailgw.toml"))
        self.assertEqual(config.auth_throttle.exempt, ("127.0.0.0/8", "::1"))
        throttle = FailureThrottle.from_config(Clock(), config.auth_throttle)
        for address in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"):
            self.assertFalse(any(throttle.record_failure(address) for _ in range(50)))
        self.assertTrue(any(throttle.record_failure("192.0.2.1") for _ in range(50)))

    def test_certificate(self):
        cert_path, key_path = self.path("tls/cert.pem"), self.path("tls/key.pem")
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
        self.assertIsInstance(key.curve, ec.SECP256R1)
        self.assertEqual(cert.public_key().public_numbers(), key.public_key().public_numbers())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual([str(a) for a in san.get_values_for_type(x509.IPAddress)],
                         ["127.0.0.1"])
        lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
        self.assertGreater(lifetime, datetime.timedelta(days=3640))
        self.assertEqual(os.stat(key_path).st_mode & 0o777, 0o600)
        for name in ("localhost", "127.0.0.1"):
            peer = handshake(cert_path, cert_path, key_path, name)
            self.assertIn(("DNS", "localhost"), peer["subjectAltName"])

    async def test_demo_tenant(self):
        from twisted.internet import reactor
        store = open_store(load_config(self.path("mailgw.toml")).database.url, reactor)
        await store.start()
        self.addCleanup(store.close)
        self.assertEqual([o.permalink for o in await store.list_organizations()], ["demo"])
        domains = await store.list_domains(server=("demo", "main"))
        self.assertEqual([(d.name, d.verified) for d in domains], [("example.com", True)])
        credentials = await store.list_credentials(("demo", "main"))
        api_key = re.search(r"demo api key: ([A-Za-z0-9]{24})", self.first.stdout).group(1)
        self.assertEqual([(c.type, c.name, c.key) for c in credentials],
                         [("smtp", "demo", KEY_LINE.search(self.first.stdout).group(1)),
                          ("api", "demo-api", api_key)])


class DevSetupEdgeTests(unittest.TestCase):
    def setUp(self):
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.folder, "var"))
        self.config = os.path.join(self.folder, "var", "mailgw.toml")

    async def test_existing_tenants_are_left_alone(self):
        from twisted.internet import reactor
        with open(self.config, "w") as f:
            f.write('hostname = "localhost"\n[database]\nurl = "sqlite:db.sqlite3"\n')
        store = open_store("sqlite:" + os.path.join(self.folder, "var", "db.sqlite3"), reactor)
        await store.start()
        self.addCleanup(store.close)
        await store.upgrade()
        await store.add_organization("acme", "Acme")
        run = devsetup(self.folder)
        self.assertEqual((run.returncode, run.stderr), (0, ""))
        self.assertIn("devsetup: no demo credential", run.stdout)
        self.assertIsNone(KEY_LINE.search(run.stdout))
        self.assertEqual([o.permalink for o in await store.list_organizations()], ["acme"])
        # No [tls] section: no certificate is made.
        self.assertFalse(os.path.exists(os.path.join(self.folder, "var", "tls")))

    def test_bad_config_is_one_line_and_left_unchanged(self):
        text = 'hostname = "localhost"\nbogus = true\n'
        with open(self.config, "w") as f:
            f.write(text)
        run = devsetup(self.folder)
        self.assertEqual(run.returncode, 1)
        self.assertEqual(run.stderr, "devsetup: config error: bogus: unknown key\n")
        self.assertEqual(Path(self.config).read_text(), text)


#: keys whose example value is not the default, because there is none that
#: would work (hostname is this machine's name; TLS files and listeners have
#: no default)
EXAMPLE_VALUES = {"hostname", "certificate", "private_key", "endpoint", "tls",
                  "auth_requires_tls"}


class ExampleConfigTests(unittest.TestCase):
    def test_loads(self):
        config = load_config(EXAMPLE)
        self.assertEqual([ls.tls for ls in config.listeners], ["starttls", "implicit"])

    def test_every_key_is_listed_with_its_default(self):
        text = EXAMPLE.read_text()
        raw = tomllib.loads(text)
        sections = {"database": config_module.DatabaseConfig, "tls": config_module.TLSConfig,
                    "limits": config_module.LimitsConfig,
                    "auth_throttle": config_module.AuthThrottleConfig,
                    "relay": config_module.RelayConfig,
                    "metrics": config_module.MetricsConfig,
                    "http_api": config_module.HTTPAPIConfig,
                    "web": config_module.WebConfig,
                    "dns": config_module.DNSConfig,
                    "webhooks": config_module.WebhooksConfig,
                    "server": config_module.ServerConfig,
                    "listeners": config_module.ListenerConfig}
        top = [f for f in dataclasses.fields(config_module.Config)
               if not f.metadata.get("internal")]
        self.assertEqual({f.name for f in top if f.name in raw}, {f.name for f in top})
        self.check_keys(text, config_module.Config, raw, skip=set(sections))
        for name, cls in sections.items():
            table = raw[name][0] if name == "listeners" else raw[name]
            self.check_keys(text, cls, table)

    def check_keys(self, text, cls, table, skip=frozenset()):
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal") or f.name in skip:
                continue
            where = f"{cls.__name__}.{f.name}"
            self.assertRegex(text, rf"(?m)^{f.name} = ", where)
            if f.default is dataclasses.MISSING or f.name in EXAMPLE_VALUES:
                continue
            value = table[f.name]
            self.assertEqual(tuple(value) if isinstance(value, list) else value,
                             f.default, where)


class DevWebTests(unittest.TestCase):
    """make run turns the web interface on and prints how to sign in."""

    def test_a_set_password_link_until_the_admin_has_a_password(self):
        folder, first = first_run()
        self.assertEqual(first.returncode, 0, first.stderr)
        link = re.search(r"(?m)^  (http://127\.0\.0\.1:8080/set-password\?token=\S+)$",
                         first.stdout)
        self.assertIsNotNone(link, first.stdout)
        self.assertIn("web interface: http://127.0.0.1:8080/\n", first.stdout)
        config = load_config(os.path.join(folder, "var", "mailgw.toml"))
        self.assertEqual(config.web.endpoint, "tcp:8080:interface=127.0.0.1")
        # once a password is set, the next run says where to sign in
        subprocess.run([sys.executable, "-m", "mailgw.admin.cli", "--config",
                        "var/mailgw.toml", "user", "passwd", "admin@example.com",
                        "--password-stdin"], input="a development password\n", text=True,
                       cwd=folder, check=True, capture_output=True, timeout=60)
        again = devsetup(folder)
        self.assertIn("web interface: http://127.0.0.1:8080/ (sign in as admin@example.com;",
                      again.stdout)
        self.assertNotIn("set-password", again.stdout)
