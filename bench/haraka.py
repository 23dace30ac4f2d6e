"""Haraka (Node.js), the second peer of ``make bench``: STARTTLS, AUTH PLAIN
through its ``auth/flat_file`` plugin, and ``queue/discard``, in one process.

It is installed by npm, once, into the checkout's ``.cache/bench-haraka``
folder, when ``npm`` is on the PATH; otherwise the bench says why and goes on
without it. The same certificate and credential as the other servers; its
log level is ``notice`` (no line per message, as mailgw's bench config
neither writes one per command).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

from bench import servers

#: the release measured (bench/RESULTS.md)
PACKAGE = "Haraka@3.3.4"
CACHE = os.path.join(servers.ROOT, ".cache", "bench-haraka")
#: Haraka's "listening" log line
LISTENING = re.compile(r"\[(server|core)\] Listening on (\S+?):(\d+)")


def executable() -> tuple[str | None, str]:
    """C{(path of haraka, "")} once installed, or C{(None, why not)}."""
    path = os.path.join(CACHE, "node_modules", ".bin", "haraka")
    if os.path.exists(path):
        return path, ""
    if shutil.which("npm") is None or shutil.which("node") is None:
        return None, "npm and node are not installed (Debian: nodejs npm)"
    os.makedirs(CACHE, exist_ok=True)
    result = subprocess.run(["npm", "install", "--prefix", CACHE, "--no-audit", "--no-fund",
                             "--silent", PACKAGE], capture_output=True, timeout=600)
    if result.returncode != 0 or not os.path.exists(path):
        return None, f"npm install {PACKAGE} failed: {result.stderr.decode()[-300:]}"
    return path, ""


def dhparams() -> str:
    """Haraka's DH parameters, made once into the cache.

    Without a C{dhparams.pem} Haraka's tls plugin runs C{openssl dhparam
    2048} in the background at every start: a minute of CPU that fell on
    whichever server was measured next, and when it took longer than
    Haraka's 30 s limit on a busy machine Haraka ended in the middle of a
    scenario. (DHE is not negotiated here anyway: the certificate is
    ECDSA.)"""
    path = os.path.join(CACHE, "dhparams.pem")
    if not os.path.exists(path):
        subprocess.run(["openssl", "dhparam", "-dsaparam", "-out", path + ".new", "2048"],
                       check=True, capture_output=True, timeout=300)
        os.replace(path + ".new", path)
    return path


def write_config(folder: str, cert: str, key: str, password: str, port: int,
                 max_message_size_mb: int = 64) -> str:
    """A Haraka configuration folder under C{folder}; its path."""
    home = os.path.join(folder, "haraka")
    config = os.path.join(home, "config")
    os.makedirs(config, exist_ok=True)
    shutil.copy(cert, os.path.join(config, "tls_cert.pem"))
    shutil.copy(key, os.path.join(config, "tls_key.pem"))
    shutil.copy(dhparams(), os.path.join(config, "dhparams.pem"))
    files = {
        # nodes=0: one process, no cluster master (as the comparison)
        "smtp.ini": f"listen=127.0.0.1:{port}\nnodes=0\n",
        "plugins": "tls\nauth/flat_file\nqueue/discard\n",
        "auth_flat_file.ini": f"[core]\nmethods=PLAIN\n[users]\nbench={password}\n",
        "me": "bench.haraka.test\n",
        "log.ini": "[main]\nlevel=notice\ntimestamps=false\nformat=default\n",
    }
    # Haraka reads a config file instead of its default, so this one starts
    # from the default and only raises the size limit (scenario (c))
    with open(os.path.join(CACHE, "node_modules", "Haraka", "config", "connection.ini")) as f:
        files["connection.ini"] = re.sub(r"(?m)^bytes=\d+$",
                                         f"bytes={max_message_size_mb * 1024 * 1024}",
                                         f.read())
    for name, text in files.items():
        with open(os.path.join(config, name), "w") as f:
            f.write(text)
    return home


class HarakaProcess(servers.ServerProcess):
    """Haraka, whose port is the one written in its config."""

    def __init__(self, path: str, home: str, folder: str, port: int):
        super().__init__("haraka", [path, "-c", home], folder, "haraka.log",
                         env={"YES_REALLY_DO_DISCARD": "1"})
        self.expected_port = port

    def listening(self, text: str) -> int | None:
        m = LISTENING.search(text)
        return int(m.group(3)) if m else None


def haraka_process(folder: str, cert: str, key: str, password: str):
    """A fresh Haraka process on a free port, or C{(None, why not)}."""
    path, why = executable()
    if path is None:
        return None, why
    port = servers.free_port()
    home = write_config(folder, cert, key, password, port)
    return HarakaProcess(path, home, folder, port), ""
