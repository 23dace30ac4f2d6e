"""The systemd unit, etc/systemd/mailgw.service, checked without systemd
running (see docs/deployment.md):

  - C{systemd-analyze verify} finds nothing to say about it, and its
    C{security} exposure stays low;
  - MemoryDenyWriteExecute= stays out while pyOpenSSL's cffi callbacks need
    memory that is writable and executable;
  - as root, the unit's own ExecStart line runs the way systemd would start
    it: as an unprivileged user from its first instruction (C{setpriv}, with
    the unit's capabilities, C{no_new_privs}, its umask and open files
    limit, and a seccomp filter built from its SystemCallFilter= and
    RestrictAddressFamilies=), in a read-only mount namespace but for its
    ReadWritePaths= and with a /proc of its own process only, on real ports
    below 1024. It binds them without ever being root, serves STARTTLS with
    AUTH PLAIN, creates only private files, reloads its certificate on the
    unit's ExecReload and stops cleanly on SIGTERM within TimeoutStopSec.

PrivateTmp=, ProtectHome=, PrivateDevices= and the kernel protections are
not reproduced: the test's own files live under /tmp, and the rest needs
systemd itself.
"""
from __future__ import annotations

import errno
import grp
import hashlib
import json
import os
import pwd
import re
import resource
import shlex
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time

from twisted.trial import unittest

from mailgw.admin.devsetup import make_certificate
from tests.e2e.gateway import ROOT, Gateway, require_tool
from tests.e2e.test_submission import MESSAGE, QUEUED

UNIT = os.path.join(ROOT, "etc", "systemd", "mailgw.service")
#: the install layout the unit names (docs/deployment.md); the tests put
#: this checkout's twistd and a throwaway config in their place
INSTALLED_TWISTD = "/opt/mailgw/venv/bin/twistd"
INSTALLED_CONFIG = "/etc/mailgw/mailgw.toml"
#: the config's shutdown_grace when it sets none
DEFAULT_SHUTDOWN_GRACE = 30.0
#: what systemd gives a system service that sets no Environment=
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: prctl(2) PR_SET_MDWE and its flag PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3):
#: the kernel's own MemoryDenyWriteExecute=
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def read_unit(path: str = UNIT) -> dict[str, dict[str, list[str]]]:
    """The unit's settings: section -> key -> every value given, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                current = sections.setdefault(line[1:-1], {})
                continue
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service(key: str, default=None):
    """The last value of C{key} in the unit's [Service] section."""
    values = read_unit()["Service"].get(key)
    return values[-1] if values else default


def seconds(value: str) -> float:
    """A systemd time span such as C{40s}, C{1min 30s} or C{45}."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "": 1}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def this_twistd() -> str:
    """The twistd of the virtualenv running the tests."""
    path = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(path, os.X_OK):
        return path
    found = shutil.which("twistd")
    if not found:
        raise AssertionError(f"no twistd next to {sys.executable} nor on PATH")
    return found


def exec_start(twistd: str, config: str) -> list[str]:
    """The unit's ExecStart command line with this checkout's twistd and
    C{config} in place of the installed ones."""
    argv = shlex.split(service("ExecStart"))
    if argv[0] != INSTALLED_TWISTD or INSTALLED_CONFIG not in argv:
        raise AssertionError(f"ExecStart no longer runs {INSTALLED_TWISTD} with "
                             f"{INSTALLED_CONFIG}: {argv}")
    return [twistd] + [config if arg == INSTALLED_CONFIG else arg for arg in argv[1:]]


class UnitFileTests(unittest.TestCase):
    """What the unit promises, read from the file itself."""

    def test_never_root_one_capability(self):
        settings = read_unit()["Service"]
        self.assertEqual(settings["User"], ["mailgw"])
        self.assertEqual(settings["Group"], ["mailgw"])
        self.assertEqual(settings["AmbientCapabilities"], ["CAP_NET_BIND_SERVICE"])
        self.assertEqual(settings["CapabilityBoundingSet"], ["CAP_NET_BIND_SERVICE"])
        self.assertEqual(settings["NoNewPrivileges"], ["yes"])
        argv = shlex.split(service("ExecStart"))
        # twistd -u would mean starting as root, which the unit never does
        self.assertFalse({"-u", "--uid", "-g", "--gid"} & set(argv), argv)
        self.assertIn("--nodaemon", argv)

    def test_stop_timeout_above_the_shutdown_grace(self):
        self.assertGreater(seconds(service("TimeoutStopSec")), DEFAULT_SHUTDOWN_GRACE)

    def test_writable_paths(self):
        self.assertEqual(service("ProtectSystem"), "strict")
        self.assertEqual(service("ReadWritePaths").split(), ["/var/lib/mailgw", "/var/spool/mailgw"])
        self.assertEqual(service("UMask"), "0077")


class SystemdAnalyzeTests(unittest.TestCase):
    """C{systemd-analyze} on a copy of the unit whose ExecStart names this
    checkout's twistd (verify checks that the binary exists)."""

    def setUp(self):
        self.analyze = require_tool("systemd-analyze")
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        # A container may lack what systemd-analyze needs: find out on a
        # unit that has nothing wrong with it.
        control = self.write_unit("control.service",
                                  "[Service]\nType=oneshot\nExecStart=/bin/true\n")
        result = self.run_analyze("verify", control)
        if result.returncode != 0 or result.stdout.strip():
            raise unittest.SkipTest(f"systemd-analyze cannot run here: {result.stdout.strip()}")

    def write_unit(self, name: str, text: str) -> str:
        path = os.path.join(self.folder, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def run_analyze(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.analyze, *args], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, SYSTEMD_PAGER="", SYSTEMD_COLORS="0"))

    def unit_copy(self, name: str = "mailgw.service", change=lambda text: text) -> str:
        with open(UNIT) as f:
            text = f.read()
        self.assertIn(INSTALLED_TWISTD, text)
        return self.write_unit(name, change(text.replace(INSTALLED_TWISTD, this_twistd())))

    def test_verify(self):
        path = self.unit_copy()
        result = self.run_analyze("verify", path)
        said = [line for line in (result.stdout + result.stderr).splitlines()
                if "mailgw.service" in line]
        self.assertEqual((result.returncode, said), (0, []), result.stdout + result.stderr)

    def test_verify_sees_a_typo(self):
        """verify is worth something here: a misspelt setting is reported."""
        path = self.unit_copy("typo.service",
                              lambda text: text.replace("ProtectSystem=", "ProtectSytem="))
        result = self.run_analyze("verify", path)
        self.assertIn("ProtectSytem", result.stdout + result.stderr)

    def test_security_exposure(self):
        path = self.unit_copy()
        result = self.run_analyze("security", "--offline=true", "--no-pager", path)
        found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
        if found is None:
            raise unittest.SkipTest("this systemd-analyze cannot score a unit file offline: "
                                    + (result.stderr.strip() or result.stdout.strip()))
        # 0 is a fully locked-down service, 10 an unprotected one; the gaps
        # left (the network, ambient capability, W^X memory) are on purpose.
        self.assertLessEqual(float(found.group(1)), 2.0, result.stdout)


#: Run by the user the unit names, with no_new_privs set, just before the
#: gateway: what systemd does last before exec'ing ExecStart. Reports who it
#: runs as (refusing to go on as root), loads seccomp filters built from the
#: unit, then runs the command line's console script in the same process.
#: Not an exec: the user would need to reach the interpreter's real path,
#: which a test machine's Python under root's home (pyenv) does not let it;
#: an installed /opt/mailgw/venv uses /usr/bin/python3, which it can reach.
CONFINE = r"""
import ctypes, json, runpy, sys

spec = json.loads(sys.argv[1])
with open("/proc/self/status") as f:
    status = {k: v.split() for k, _, v in (line.partition(":") for line in f)}
print("confine: uid", *status["Uid"], "gid", *status["Gid"], "CapEff", *status["CapEff"],
      "CapAmb", *status["CapAmb"], "NoNewPrivs", *status["NoNewPrivs"], flush=True)
if "0" in status["Uid"] + status["Gid"]:
    sys.exit("confine: refusing to run the unit's command as root")


class Compare(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


lib = ctypes.CDLL("libseccomp.so.2")
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                       ctypes.c_uint, ctypes.POINTER(Compare)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
KILL_PROCESS, ALLOW = 0x80000000, 0x7FFF0000
EQ, GT = 4, 6


def load(default, rules):
    context = lib.seccomp_init(default)
    for action, name, compares in rules:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # not a system call of this architecture
            continue
        array = (Compare * len(compares))(*[Compare(0, op, value, 0) for op, value in compares])
        if lib.seccomp_rule_add_array(context, action, number, len(compares), array) < 0:
            sys.exit(f"confine: cannot add a seccomp rule for {name}")
    if lib.seccomp_load(context) < 0:
        sys.exit("confine: cannot load the seccomp filter")


# RestrictAddressFamilies=: socket() of any other family is EAFNOSUPPORT.
errno = 0x00050000 | spec["eafnosupport"]
allowed = set(spec["families"])
load(ALLOW, [(errno, "socket", [(EQ, family)]) for family in range(max(allowed))
             if family not in allowed] + [(errno, "socket", [(GT, max(allowed))])])
# SystemCallFilter=, last: it does not allow seccomp() itself. Anything else
# kills the process (the unit says EPERM; a kill cannot go unnoticed here).
load(KILL_PROCESS, [(ALLOW, name, []) for name in spec["allow"]])
# The command is a console script of the virtualenv (twistd): it runs in
# this interpreter, the one its first line names.
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def syscall_groups(analyze: str) -> dict[str, list[str]]:
    """systemd's named system call sets (C{@system-service} ...), as this
    systemd defines them."""
    output = subprocess.run([analyze, "syscall-filter", "--no-pager"], capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, SYSTEMD_COLORS="0")).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(items, groups, seen=None) -> set[str]:
    names = set()
    seen = set() if seen is None else seen
    for item in items:
        if item.startswith("@"):
            if item not in seen:
                seen.add(item)
                names |= expand(groups[item], groups, seen)
        else:
            names.add(item)
    return names


def allowed_syscalls(analyze: str) -> list[str]:
    """The system calls the unit's SystemCallFilter= lines allow: the first
    line's list, less each later C{~} line's."""
    groups = syscall_groups(analyze)
    allowed: set[str] = set()
    for value in read_unit()["Service"]["SystemCallFilter"]:
        if value.startswith("~"):
            allowed -= expand(value[1:].split(), groups)
        else:
            allowed |= expand(value.split(), groups)
    # always allowed by systemd whatever the filter says
    allowed |= {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}
    return sorted(allowed)


def capability_names(value: str) -> list[str]:
    return [cap.lower().removeprefix("cap_") for cap in value.split()]


def free_low_ports(count: int) -> list[int]:
    """C{count} ports below 1024 nothing listens on: 587 and 465 first."""
    found = []
    for port in [587, 465, *range(588, 1024)]:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise AssertionError("no free ports below 1024")


class UnitProcess(Gateway):
    """A command line run as the unit would, waited for as any gateway."""

    def __init__(self, argv: list[str], env: dict, umask: int, log_path: str):
        super().__init__(os.path.dirname(log_path), "")
        self.argv, self.env, self.umask, self.log_path = argv, env, umask, log_path

    def spawn(self) -> subprocess.Popen:
        return subprocess.Popen(self.argv, cwd="/", env=self.env, umask=self.umask,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)

    def wait_for_log(self, text: str, timeout: float = 20):
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the log:\n{self.log()}")
            time.sleep(0.05)


class MemoryDenyWriteExecuteTests(unittest.TestCase):
    """The unit leaves MemoryDenyWriteExecute= out because mailgw's TLS
    options cannot be built under W^X memory. The kernel's own W^X switch
    (PR_SET_MDWE) shows whether that still holds."""

    def test_tls_under_write_xor_execute(self):
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        cert, key = make_certificate("localhost")
        for name, data in (("cert.pem", cert), ("key.pem", key)):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
        script = (
            "import ctypes, sys\n"
            f"if ctypes.CDLL(None).prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0):\n"
            "    sys.exit(3)\n"
            "from mailgw.tls import TLSOptions\n"
            f"TLSOptions({folder + '/cert.pem'!r}, {folder + '/key.pem'!r})\n")
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
        if result.returncode == 3:
            raise unittest.SkipTest("this kernel has no PR_SET_MDWE (Linux 6.3 and later)")
        works = result.returncode == 0
        if service("MemoryDenyWriteExecute", "no") == "yes":
            self.assertTrue(works, "MemoryDenyWriteExecute=yes, but TLS fails under W^X:\n"
                            + result.stderr)
        elif works:
            raise unittest.SkipTest("TLS now works under W^X memory: MemoryDenyWriteExecute=yes "
                                    "can go into the unit, and its comment out")
        else:
            self.assertIn("write+execute memory", result.stderr)


class RunAsTheUnitTests(unittest.TestCase):
    """As root: the unit's ExecStart line under its user (nobody/nogroup
    here), capabilities, umask, limits and system call filter, on real ports
    below 1024."""

    def setUp(self):
        if os.geteuid() != 0:
            if in_ci():
                raise AssertionError("CI runs as root: this test must run")
            raise unittest.SkipTest("needs root to start the unit's command as systemd does")
        self.analyze = require_tool("systemd-analyze")
        self.setpriv = require_tool("setpriv")
        self.prlimit = require_tool("prlimit")
        self.unshare = shutil.which("unshare")
        if self.unshare is not None:
            probe = subprocess.run([self.unshare, "--mount", "--propagation", "private", "--",
                                    "mount", "-t", "proc", "-o", "subset=pid", "proc", "/proc"],
                                   capture_output=True, timeout=30)
            self.unshare = self.unshare if probe.returncode == 0 else None
        self.user = pwd.getpwnam("nobody")
        self.group = grp.getgrnam("nogroup")
        # Not under _trial_temp: its folders are 0700, closed to the user.
        self.root = tempfile.mkdtemp(prefix="mailgw-systemd-")
        self.addCleanup(shutil.rmtree, self.root, True)
        os.chmod(self.root, 0o755)
        self.layout()
        self.starttls, self.implicit = free_low_ports(2)
        self.config = os.path.join(self.etc, "mailgw.toml")
        self.write_private(self.config, self.config_text().encode())
        self.key = self.add_tenant()
        self.unit = UnitProcess(self.command(exec_start(this_twistd(), self.config)),
                                self.environment(), int(service("UMask"), 8),
                                os.path.join(self.root, "journal.log"))
        self.addCleanup(self.unit.stop)
        self.unit.start(2)

    def layout(self):
        """docs/deployment.md's folders, under self.root."""
        self.etc = os.path.join(self.root, "etc", "mailgw")
        self.tls = os.path.join(self.etc, "tls")
        self.state = os.path.join(self.root, "var", "lib", "mailgw")
        self.spool = os.path.join(self.root, "var", "spool", "mailgw")
        for folder, owner, mode in ((self.etc, 0, 0o750), (self.tls, 0, 0o750),
                                    (self.state, self.user.pw_uid, 0o700),
                                    (self.spool, self.user.pw_uid, 0o700)):
            os.makedirs(folder)
            os.chown(folder, owner, self.group.gr_gid)
            os.chmod(folder, mode)
        for folder in ("etc", "var", "var/lib", "var/spool"):
            os.chmod(os.path.join(self.root, folder), 0o755)
        self.write_certificate()

    def write_private(self, path: str, data: bytes):
        """root:<the unit's group> 0640, replaced whole, as a deploy hook does."""
        with open(path + ".new", "wb") as f:
            f.write(data)
        os.chown(path + ".new", 0, self.group.gr_gid)
        os.chmod(path + ".new", 0o640)
        os.replace(path + ".new", path)

    def write_certificate(self) -> str:
        """A new pair (the key first); the certificate's SHA-256 fingerprint."""
        cert, key = make_certificate("localhost")
        self.write_private(os.path.join(self.tls, "privkey.pem"), key)
        self.write_private(os.path.join(self.tls, "fullchain.pem"), cert)
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.decode())).hexdigest()

    def config_text(self) -> str:
        listeners = "".join(
            f'[[listeners]]\nendpoint = "tcp:{port}:interface=127.0.0.1"\ntls = "{mode}"\n'
            for port, mode in ((self.starttls, "starttls"), (self.implicit, "implicit")))
        return (
            'hostname = "localhost"\n'
            f'spool_directory = "{self.spool}"\n'
            "[database]\n"
            f'url = "sqlite:{self.state}/mailgw.sqlite3"\n'
            "[tls]\n"
            f'certificate = "{self.tls}/fullchain.pem"\n'
            f'private_key = "{self.tls}/privkey.pem"\n'
            "reload_interval = 0\n"  # only the reload signal: the test tells which did it
            "[metrics]\n"
            'endpoint = "tcp:0:interface=127.0.0.1"\n'
            "[relay]\n"
            "enabled = false\n" + listeners)

    def environment(self) -> dict:
        """systemd's environment for User=, plus this checkout on the path
        (instead of the installed package)."""
        return {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", "HOME": self.user.pw_dir,
                "USER": self.user.pw_name, "LOGNAME": self.user.pw_name,
                "SHELL": self.user.pw_shell, "PYTHONPATH": ROOT}

    def as_user(self, argv: list[str]) -> list[str]:
        """C{argv} under the unit's user, group and capabilities, as systemd
        would run it (nobody and nogroup stand in for mailgw)."""
        ambient = capability_names(service("AmbientCapabilities"))
        bounding = capability_names(service("CapabilityBoundingSet"))
        return [self.setpriv, f"--reuid={self.user.pw_name}", f"--regid={self.group.gr_name}",
                "--init-groups",
                "--inh-caps=" + ",".join("+" + cap for cap in ambient),
                "--ambient-caps=" + ",".join("+" + cap for cap in ambient),
                "--bounding-set=-all," + ",".join("+" + cap for cap in bounding),
                *(["--no-new-privs"] if service("NoNewPrivileges") == "yes" else []),
                "--", *argv]

    def command(self, argv: list[str]) -> list[str]:
        """The whole start: mounts and limits (as root), then the user, then
        seccomp."""
        families = [getattr(socket, name) for name in service("RestrictAddressFamilies").split()]
        spec = json.dumps({"allow": allowed_syscalls(self.analyze), "families": families,
                           "eafnosupport": errno.EAFNOSUPPORT})
        return [*self.mounts(), self.prlimit, f"--nofile={self.nofile()}:{self.nofile()}", "--",
                *self.as_user([sys.executable, "-c", CONFINE, spec, *argv])]

    def mounts(self) -> list[str]:
        """ProtectSystem=strict with ReadWritePaths=, ProtectProc=invisible
        and ProcSubset=pid, in a mount namespace of the command's own: the
        file systems of / and of the test's folder read-only but for the
        unit's writable paths (under the test's folder), and a /proc that
        shows the process nothing but itself. Empty where mounts are
        refused (a container without CAP_SYS_ADMIN): the rest still holds."""
        if self.unshare is None:
            return []
        writable = [self.root + path for path in service("ReadWritePaths").split()]
        top = self.root
        while not os.path.ismount(top):
            top = os.path.dirname(top)
        script = ("set -e; mount -t proc -o subset=pid,hidepid=invisible proc /proc; "
                  'for top in / "$TOP"; do mount -o remount,bind,ro "$top"; done; '
                  'for path in $WRITABLE; do mount --bind "$path" "$path"; '
                  'mount -o remount,bind,rw "$path"; done; exec "$@"')
        return [self.unshare, "--mount", "--propagation", "private", "--", "env",
                f"TOP={top}", "WRITABLE=" + " ".join(writable), "sh", "-c", script, "sh"]

    @staticmethod
    def nofile() -> int:
        """The unit's LimitNOFILE=, or the hard limit in force when that is
        lower: a container may deny even root a higher one (systemd, PID 1
        with every capability, could grant it)."""
        return min(int(service("LimitNOFILE")), resource.getrlimit(resource.RLIMIT_NOFILE)[1])

    def add_tenant(self) -> str:
        """acme/web with good.example and an smtp key, added as the unit's
        user with its umask (as `runuser -u mailgw -- mailgw ...`)."""
        cli = [sys.executable, "-m", "mailgw.admin.cli", "--config", self.config]
        for args in (["db", "upgrade"], ["org", "add", "acme", "--name", "Acme"],
                     ["server", "add", "acme/web", "--name", "Web"],
                     ["domain", "add", "good.example", "--server", "acme/web", "--verified"],
                     ["credential", "add", "acme/web", "--type", "smtp", "--name", "e2e"]):
            result = subprocess.run(self.as_user(cli + args + ["--json"]), cwd="/",
                                    env=self.environment(), umask=int(service("UMask"), 8),
                                    capture_output=True, timeout=60)
            if result.returncode != 0:
                raise AssertionError(f"mailgw {' '.join(args)}: {result.stderr.decode()}")
        return json.loads(result.stdout)["key"]

    def proc_status(self) -> dict[str, list[str]]:
        with open(f"/proc/{self.unit.process.pid}/status") as f:
            return {k: v.split() for k, _, v in (line.partition(":") for line in f)}

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=os.path.join(self.tls, "fullchain.pem"))

    def served_fingerprint(self) -> str:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # whichever pair is served
        with smtplib.SMTP_SSL("localhost", self.implicit, context=context, timeout=30) as client:
            self.assertEqual(client.ehlo()[0], 250)
            return hashlib.sha256(client.sock.getpeercert(binary_form=True)).hexdigest()

    def test_unprivileged_from_the_start_on_low_ports(self):
        self.assertEqual(sorted(self.unit.ports),
                         sorted([("starttls", self.starttls), ("implicit", self.implicit)]))
        # The last step before twistd already ran as the user, with no way back.
        uid, gid = self.user.pw_uid, self.group.gr_gid
        self.assertIn(f"confine: uid {uid} {uid} {uid} {uid} gid {gid} {gid} {gid} {gid}",
                      self.unit.log())
        status = self.proc_status()
        self.assertEqual({int(u) for u in status["Uid"]}, {uid})
        self.assertEqual({int(g) for g in status["Gid"]}, {gid})
        bind_service = 1 << 10  # CAP_NET_BIND_SERVICE
        for field in ("CapEff", "CapPrm", "CapAmb", "CapBnd"):
            self.assertEqual(int(status[field][0], 16), bind_service, field)
        self.assertEqual(status["NoNewPrivs"], ["1"])
        self.assertEqual(status["Seccomp"], ["2"])  # filter mode
        with open(f"/proc/{self.unit.process.pid}/limits") as f:
            nofile = next(line for line in f if line.startswith("Max open files")).split()
        self.assertEqual(nofile[3:5], [str(self.nofile())] * 2)
        if self.unshare is not None:
            with open(f"/proc/{self.unit.process.pid}/mountinfo") as f:
                root = next(line.split() for line in f if line.split()[4] == "/")
            self.assertIn("ro", root[5].split(","))

    def test_starttls_auth_plain_and_private_files(self):
        with smtplib.SMTP("localhost", self.starttls, timeout=30) as client:
            client.starttls(context=self.client_context())
            client.ehlo()
            code, _ = client.auth("PLAIN", lambda challenge=None: f"\0any\0{self.key}")
            self.assertEqual(code, 235)
            self.assertEqual(client.mail("app@good.example")[0], 250)
            self.assertEqual(client.rcpt("user@dest.example")[0], 250)
            code, reply = client.data(MESSAGE)
            self.assertEqual(code, 250)
            self.assertRegex(reply.decode(), QUEUED)
        self.served_fingerprint()  # implicit TLS answers too
        made = []
        for top in (self.state, self.spool):
            made.append(top)
            for where, folders, files in os.walk(top):
                made += [os.path.join(where, name) for name in folders + files]
        self.assertIn(os.path.join(self.state, "mailgw.sqlite3"), made)
        for path in made:
            info = os.lstat(path)
            expected = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
            self.assertEqual((path, info.st_uid, oct(stat.S_IMODE(info.st_mode))),
                             (path, self.user.pw_uid, oct(expected)))

    def test_reload_serves_the_new_certificate(self):
        self.assertNotIn("TLS certificate reloaded", self.unit.log())
        fingerprint = self.write_certificate()
        self.assertNotEqual(self.served_fingerprint(), fingerprint)
        # ExecReload= runs as the unit's user too, with $MAINPID filled in.
        reload = [str(self.unit.process.pid) if arg == "$MAINPID" else arg
                  for arg in shlex.split(service("ExecReload"))]
        subprocess.run(self.as_user(reload), env=self.environment(), check=True, timeout=30)
        self.unit.wait_for_log("TLS certificate reloaded")
        self.assertEqual(self.served_fingerprint(), fingerprint)
        self.assertIsNone(self.unit.process.poll())

    def test_sigterm_stops_cleanly(self):
        idle = smtplib.SMTP("localhost", self.starttls, timeout=30)
        self.addCleanup(idle.close)
        self.assertEqual(idle.ehlo()[0], 250)
        limit = seconds(service("TimeoutStopSec"))
        started = time.monotonic()
        self.unit.process.send_signal(signal.SIGTERM)
        try:
            status = self.unit.process.wait(limit)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {limit} s after SIGTERM: systemd would "
                                 f"SIGKILL it\n{self.unit.log()}") from None
        self.assertLess(time.monotonic() - started, limit)
        # After a clean stop twistd ends by the signal it was stopped with
        # (status 0 where it does not); systemd counts both as a success.
        self.assertIn(status, (0, -signal.SIGTERM), self.unit.log())
        self.unit.wait_for_log("mailgw stopped", 5)
        self.assertEqual(idle.getreply()[0], 421)  # the idle session was told


class RunAsTheUnitWithWorkersTests(RunAsTheUnitTests):
    """The same with C{[server] workers = 2} (docs/deployment.md, "Several
    processes on one machine"): the worker process, started by the gateway
    after it has bound the low ports, needs no privilege of its own, runs
    under the same confinement, reloads its certificate on the unit's
    ExecReload and stops within TimeoutStopSec."""

    def setUp(self):
        super().setUp()
        self.unit.wait_for_log("worker 1: store open: accepting mail")

    def config_text(self) -> str:
        return super().config_text() + "[server]\nworkers = 2\n"

    def worker_pid(self) -> int:
        return int(re.search(r"worker 1 started \(pid (\d+)\)", self.unit.log()).group(1))

    def test_the_worker_is_confined_as_the_gateway(self):
        with open(f"/proc/{self.worker_pid()}/status") as f:
            worker = {k: v.split() for k, _, v in (line.partition(":") for line in f)}
        gateway = self.proc_status()
        self.assertEqual(worker["PPid"], [str(self.unit.process.pid)])
        for field in ("Uid", "Gid", "CapEff", "CapPrm", "CapAmb", "CapBnd", "NoNewPrivs",
                      "Seccomp"):
            self.assertEqual(worker[field], gateway[field], field)

    def test_reload_serves_the_new_certificate(self):
        fingerprint = self.write_certificate()
        reload = [str(self.unit.process.pid) if arg == "$MAINPID" else arg
                  for arg in shlex.split(service("ExecReload"))]
        subprocess.run(self.as_user(reload), env=self.environment(), check=True, timeout=30)
        self.unit.wait_for_log("worker 1: TLS certificate reloaded")
        self.unit.wait_for_log("] TLS certificate reloaded")  # twistd's own
        # whichever process a connection reaches serves the new certificate
        self.assertEqual({self.served_fingerprint() for _ in range(6)}, {fingerprint})
