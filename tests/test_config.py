"""The configuration file: every wrong key, type or value is one line naming
the key; relative paths resolve against the file's folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

from mailgw.config import ConfigError, config_as_data, load_config, parse_config
from mailgw.tap import Options
from tests.e2e.gateway import ROOT


class ParseTests(unittest.TestCase):
    def assertError(self, data, message):
        with self.assertRaises(ConfigError) as caught:
            parse_config(data, base=Path("/srv/conf"))
        self.assertEqual(str(caught.exception), message)
        self.assertNotIn("\n", str(caught.exception))

    def test_defaults(self):
        config = parse_config({}, base=Path("/srv/conf"))
        self.assertEqual(config.database.url, "sqlite:/srv/conf/var/mailgw.sqlite3")
        self.assertEqual(config.spool_directory, "/srv/conf/var/spool")
        self.assertEqual(config.limits.max_message_size, 14 * 1024 * 1024)
        self.assertEqual(config.limits.max_recipients, 100)
        self.assertEqual(config.listeners, ())
        self.assertIsNone(config.tls)
        self.assertEqual(config.auth_throttle.max_failures, 10)

    def test_relative_paths_resolve_against_the_file(self):
        config = parse_config({
            "database": {"url": "sqlite:data/db.sqlite3"},
            "tls": {"certificate": "tls/c.pem", "private_key": "/abs/k.pem"},
            "listeners": [{"endpoint": "tcp:25", "tls": "starttls"}]}, base=Path("/srv/conf"))
        self.assertEqual(config.database.url, "sqlite:/srv/conf/data/db.sqlite3")
        self.assertEqual(config.tls.certificate, "/srv/conf/tls/c.pem")
        self.assertEqual(config.tls.private_key, "/abs/k.pem")

    def test_auth_requires_tls_default_follows_tls(self):
        config = parse_config({"tls": {"certificate": "c", "private_key": "k"}, "listeners": [
            {"endpoint": "tcp:1", "tls": "none"}, {"endpoint": "tcp:2", "tls": "starttls"},
            {"endpoint": "tcp:3", "tls": "implicit", "auth_requires_tls": False}]})
        self.assertEqual([li.requires_tls_for_auth for li in config.listeners],
                         [False, True, False])

    def test_errors_name_the_key(self):
        cases = [
            ({"hostnam": "x"}, "config error: hostnam: unknown key"),
            ({"limits": {"max_recipients": "10"}},
             "config error: limits.max_recipients: must be an integer"),
            ({"limits": {"max_recipients": 0}},
             "config error: limits.max_recipients: must be greater than 0"),
            ({"limits": {"max_recipients": True}},
             "config error: limits.max_recipients: must be an integer"),
            ({"limits": 3}, "config error: limits: must be a table"),
            ({"listeners": [{"endpoint": "tcp:25", "tls": "yes"}]},
             "config error: listeners[0].tls: must be one of 'none', 'starttls', 'implicit'"),
            ({"listeners": [{"endpoint": "tcp:25", "color": 1}]},
             "config error: listeners[0].color: unknown key"),
            ({"listeners": [{"tls": "none"}]}, "config error: listeners[0].endpoint: is required"),
            ({"listeners": [{"endpoint": "tcp:25", "tls": "starttls"}]},
             "config error: listeners[0].tls: 'starttls' needs a [tls] section"),
            ({"listeners": [{"endpoint": "tcp:25", "proxy_protocol": True}]},
             "config error: listeners[0].trusted_proxies: required when proxy_protocol is true"),
            ({"listeners": [{"endpoint": "tcp:25", "trusted_proxies": ["10.0.0.0/33"]}]},
             "config error: listeners[0].trusted_proxies: '10.0.0.0/33' is not a valid IPv4 or IPv6 network"),
            ({"hostname": "two words"}, "config error: hostname: must be a host name without spaces"),
            ({"database": {"url": "mysql://x"}},
             "config error: database.url: must start with sqlite: or postgresql://"),
            ({"tls": {"certificate": "c"}}, "config error: tls.private_key: is required"),
            ({"tls": {"certificate": "c", "private_key": "k", "min_version": "1.1"}},
             "config error: tls.min_version: must be one of '1.2', '1.3'"),
            ({"auth_throttle": {"window": -1}}, "config error: auth_throttle.window: must be greater than 0"),
        ]
        for data, message in cases:
            self.assertError(data, message)

    def test_workers_default_to_one_process(self):
        self.assertEqual(parse_config({}).server.workers, 1)
        self.assertEqual(parse_config({"server": {"workers": 64}}).server.workers, 64)

    def test_workers_are_validated(self):
        for value in (0, -1, 65, 1000):
            self.assertError({"server": {"workers": value}},
                             "config error: server.workers: must be an integer from 1 to 64")
        for value in ("2", 2.0, True):
            self.assertError({"server": {"workers": value}},
                             "config error: server.workers: must be an integer")
        self.assertError({"server": {"worker": 2}}, "config error: server.worker: unknown key")
        self.assertError(
            {"server": {"workers": 2}, "listeners": [{"endpoint": "unix:/run/m.sock"}]},
            "config error: listeners[0].endpoint: a unix socket cannot be shared by workers "
            "(server.workers > 1)")
        parse_config({"listeners": [{"endpoint": "unix:/run/m.sock"}]})  # one process: fine

    def test_config_as_data_parses_back_to_the_same_config(self):
        # how a worker process gets its parent's config (mailgw.workers.channel)
        config = load_config(os.path.join(ROOT, "etc", "mailgw.toml.example"))
        data = json.loads(json.dumps(config_as_data(config)))
        self.assertEqual(parse_config(data, source=config.source), config)


class FileTests(unittest.TestCase):
    def write(self, text):
        folder = self.mktemp()
        os.makedirs(folder)
        path = os.path.abspath(os.path.join(folder, "mailgw.toml"))
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_missing_and_not_toml(self):
        with self.assertRaises(ConfigError) as caught:
            load_config("/nonexistent/mailgw.toml")
        self.assertEqual(str(caught.exception), "config file not found: /nonexistent/mailgw.toml")
        path = self.write("hostname = \n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        self.assertIn("not valid TOML", str(caught.exception))

    def test_tap_options_exit_with_one_line(self):
        path = self.write('hostname = "h"\n[limits]\nmax_recipients = "many"\n')
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--config", path])
        self.assertEqual(str(caught.exception),
                         "mailgw: config error: limits.max_recipients: must be an integer")
        good = self.write('hostname = "h"\n')
        options = Options()
        options.parseOptions(["--config", good])
        self.assertEqual(options["config_value"].hostname, "h")

    def test_twistd_reports_one_line_not_a_traceback(self):
        path = self.write('[limits]\nmax_recipients = "many"\n')
        result = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "mailgw", "--config", path],
            capture_output=True, timeout=60, cwd=os.path.dirname(path),
            env=dict(os.environ, PYTHONPATH=ROOT))
        output = (result.stdout + result.stderr).decode()
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(output.strip().splitlines(),
                         ["mailgw: config error: limits.max_recipients: must be an integer"])
