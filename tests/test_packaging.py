"""The installed package, not the source tree: a wheel built from the
project, installed (non-editable) into a fresh virtual environment, makes
``twistd`` list the plugin and serve from another folder, and carries the
schema files."""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import sysconfig
import venv

from twisted.trial import unittest

from tests.e2e.gateway import ROOT


class InstalledWheelTests(unittest.TestCase):
    timeout = 300

    def setUp(self):
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "-w", self.work, ROOT],
                       check=True, capture_output=True, timeout=240)
        [self.wheel] = glob.glob(os.path.join(self.work, "mailgw-*.whl"))
        env_dir = os.path.join(self.work, "env")
        venv.create(env_dir, with_pip=False)
        self.python = os.path.join(env_dir, "bin", "python")
        site = subprocess.check_output(
            [self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True).strip()
        # The dependencies come from the test's environment as a plain path, so
        # its .pth files (which point at the source tree) are not processed.
        with open(os.path.join(site, "dependencies.pth"), "w") as f:
            f.write(sysconfig.get_paths()["purelib"] + "\n")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--target", site, self.wheel], check=True, capture_output=True,
                       timeout=120)
        self.site = site

    def run_in_other_folder(self, *args):
        folder = os.path.join(self.work, "elsewhere")
        os.makedirs(folder, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return subprocess.run([self.python, *args], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=60)

    def test_plugin_found_and_mailgw_importable_from_the_wheel(self):
        where = self.run_in_other_folder("-c", "import mailgw; print(mailgw.__file__)")
        self.assertTrue(where.stdout.strip().startswith(self.site), where.stdout)
        listed = self.run_in_other_folder(
            "-c", "from twisted.scripts.twistd import run; run()", "--help")
        self.assertRegex(listed.stdout, r"(?m)^\s+mailgw\s+mailgw SMTP submission gateway")
        options = self.run_in_other_folder(
            "-c", "from twisted.scripts.twistd import run; run()", "-n", "mailgw", "--help")
        self.assertIn("--config=", options.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.site, "twisted", "plugins",
                                                     "__init__.py")))
        for engine in ("sqlite", "postgresql"):
            files = glob.glob(os.path.join(self.site, "mailgw", "store", "schema", engine,
                                           "*.sql"))
            self.assertGreaterEqual(len(files), 2, engine)
        # the web interface's templates, stylesheet and script
        ui = os.path.join(self.site, "mailgw", "web", "ui")
        for name in ("templates/base.html", "templates/credentials.html",
                     "static/style.css", "static/copy.js"):
            self.assertTrue(os.path.isfile(os.path.join(ui, name)), name)
        loaded = self.run_in_other_folder(
            "-c", "from mailgw.web.ui.app import templates, static_files; "
                  "templates().get_template('credentials.html'); print(sorted(static_files()))")
        self.assertEqual(loaded.stdout.strip(), "['copy.js', 'style.css']", loaded.stderr)
        version = self.run_in_other_folder("-m", "mailgw.admin.cli", "--help")
        self.assertEqual(version.returncode, 0, version.stderr)
        self.assertTrue(re.search(r"usage: mailgw", version.stdout), version.stdout)
