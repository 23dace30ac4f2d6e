"""The servers under test, each a child process on loopback port 0, and what
/proc tells of them (CPU seconds, resident memory).

mailgw runs as it would in production (``twistd -n mailgw``, SQLite in WAL
with ``synchronous=FULL``, a STARTTLS listener, an ECDSA P-256 certificate),
with a throwaway folder, a seeded tenant, no metrics listener and no relay.
With C{[server] workers} (the "mailgw-w2" row) its worker processes are
measured with it. The baseline is L{bench.baseline_server} (aiosmtpd, accept
and discard).
Both are found ready by their "listening on ... port N" line, not by sleeping.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTENING = re.compile(r"listening on (\S+) at (\S+) port (\d+) \(tls=(\w+)")
START_TIMEOUT = 60
CLK_TCK = os.sysconf("SC_CLK_TCK")

ORG, SERVER, DOMAIN = "bench", "main", "bench.example"


# -- /proc ----------------------------------------------------------------------

def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of the whole process (every thread)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def children(pid: int) -> list[int]:
    """The child processes of C{pid}, and theirs (Linux: /proc/PID/task/*/children)."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return found + [grandchild for child in found for grandchild in children(child)]


def machine_busy_seconds() -> float:
    """CPU seconds every core has spent not idle (steal included), so far."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) in kB."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                found[name] = int(value.split()[0])
    return found


def reset_peak(pid: int) -> bool:
    """Start VmHWM over from the current RSS (Linux: clear_refs 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- processes ------------------------------------------------------------------

def child_env() -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONASYNCIODEBUG", None)
    return env


class ServerProcess:
    """A server child whose log file announces its port."""

    def __init__(self, name: str, argv: list[str], folder: str, log_name: str,
                 env: dict | None = None, ready: str | None = None):
        """
        @param ready: a log text that says the server takes work, beyond its
            listening line (mailgw binds first and opens its store next).
        """
        self.name = name
        self.ready = ready
        self.env = dict(child_env(), **(env or {}))
        self.argv = argv
        self.folder = folder
        self.log_path = os.path.join(folder, log_name)
        self.process = None
        self.port = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pids(self) -> list[int]:
        """The server's process and its children (mailgw's workers), so
        that CPU and memory are summed over all of them."""
        return [self.process.pid, *children(self.process.pid)]

    def start(self) -> ServerProcess:
        offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.argv, cwd=self.folder, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=self.env)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = self._log_since(offset)
            port = self.listening(text)
            if port is not None and (self.ready is None or self.ready in text):
                self.port = port
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n{self._log_since(offset)[-4000:]}")

    def listening(self, text: str) -> int | None:
        """The port the log C{text} says the server listens on, if it does."""
        m = LISTENING.search(text)
        return int(m.group(3)) if m else None

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- mailgw ---------------------------------------------------------------------

def _toml(value) -> str:
    return str(value).lower() if isinstance(value, bool) else json.dumps(value)


def write_certificate(folder: str) -> tuple[str, str]:
    """An ECDSA P-256 self-signed pair (mailgw's own make_certificate)."""
    from mailgw.admin.devsetup import make_certificate
    cert_pem, key_pem = make_certificate("localhost")
    paths = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    for path, data in zip(paths, (cert_pem, key_pem)):
        with open(path, "wb") as f:
            f.write(data)
    os.chmod(paths[1], 0o600)
    return paths


def write_mailgw_config(folder: str, cert: str, key: str, *,
                        max_message_size_mb: int = 64, connections: int = 20000) -> str:
    """The gateway's normal config, with caps raised for the load (one client
    address opens every connection) and the message size for scenario (c)."""
    listener = {"endpoint": "tcp:0:interface=127.0.0.1:backlog=1024", "tls": "starttls",
                "max_connections": connections, "max_connections_per_ip": connections}
    lines = [
        'hostname = "bench.mailgw.test"',
        'spool_directory = "spool"',
        "[database]",
        'url = "sqlite:mailgw.sqlite3"',
        "[tls]",
        f"certificate = {_toml(cert)}",
        f"private_key = {_toml(key)}",
        "[limits]",
        f"max_message_size_mb = {max_message_size_mb}",
        "[relay]",
        "enabled = false",
        "[metrics]",
        'endpoint = ""',
        "[[listeners]]",
    ] + [f"{k} = {_toml(v)}" for k, v in listener.items()]
    path = os.path.join(folder, "mailgw.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def mailgw_cli(config: str, *args: str):
    command = [sys.executable, "-m", "mailgw.admin.cli", "--config", config, *args, "--json"]
    result = subprocess.run(command, capture_output=True, env=child_env(), timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"mailgw {' '.join(args)}: {result.stderr.decode().strip()}")
    return json.loads(result.stdout) if result.stdout.strip() else None


def seed_tenant(config: str) -> str:
    """Schema, organization, server, verified domain and one smtp credential,
    through the operator's command line; returns the credential key."""
    mailgw_cli(config, "db", "upgrade")
    mailgw_cli(config, "org", "add", ORG, "--name", "Bench")
    mailgw_cli(config, "server", "add", f"{ORG}/{SERVER}", "--name", "Bench")
    mailgw_cli(config, "domain", "add", DOMAIN, "--server", f"{ORG}/{SERVER}", "--verified")
    credential = mailgw_cli(config, "credential", "add", f"{ORG}/{SERVER}", "--type", "smtp",
                            "--name", "bench")
    return credential["key"]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mailgw_process(folder: str, config: str, levers: str = "") -> ServerProcess:
    """``twistd -n mailgw``; with C{levers} ("nolog+notouch"), patched by
    L{bench.levers} first (what-if experiments only)."""
    return _twistd(folder, config, levers, "twistd.log")


def mailgw_workers_process(folder: str, config: str, workers: int) -> ServerProcess:
    """``twistd -n mailgw`` with C{[server] workers = N} (the "mailgw-wN"
    row): the same config with the setting added, ready once its last worker
    has opened its store, measured with every worker (L{ServerProcess.pids})."""
    with open(config) as f:
        text = f.read()
    path = os.path.join(folder, f"mailgw-w{workers}.toml")
    with open(path, "w") as f:
        f.write(text + f"[server]\nworkers = {workers}\n")
    found = _twistd(folder, path, "", f"twistd-w{workers}.log")
    found.name = f"mailgw-w{workers}"
    found.ready = f"worker {workers - 1}: store open: accepting mail"
    return found


def _twistd(folder: str, config: str, levers: str, log_name: str) -> ServerProcess:
    if levers:
        start = ["-c", "import bench.levers; bench.levers.main()", levers]
        name = f"mailgw+{levers}"
    else:
        start = ["-c", "from twisted.scripts.twistd import run; run()"]
        name = "mailgw"
    argv = [sys.executable, *start, "-n", "--pidfile=", f"--logfile={log_name}", "mailgw",
            "--config", config]
    return ServerProcess(name, argv, folder, log_name, ready="store open: accepting mail")


def baseline_process(folder: str, cert: str, key: str, password: str,
                     max_message_size_mb: int = 64) -> ServerProcess:
    argv = [sys.executable, "-m", "bench.baseline_server", "--port", "0",
            "--certificate", cert, "--private-key", key,
            "--max-size", str(max_message_size_mb * 1024 * 1024)]
    return ServerProcess("aiosmtpd", argv, folder, "aiosmtpd.log",
                         env={"MAILGW_BENCH_KEY": password})
