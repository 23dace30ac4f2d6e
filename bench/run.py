"""``make bench``: the same load against mailgw and two peers that discard
what they receive, aiosmtpd and Haraka (bench/haraka.py; when npm can install
it), one table, and the targets with PASS/FAIL.

    python -m bench.run            # the full run (a few minutes)
    python -m bench.run --quick    # smaller budgets, for development
    python -m bench.run --smoke    # a handful of messages (the trial smoke test)

Scenarios (each against a fresh server process, mailgw then aiosmtpd, back
to back, after a short warm-up that is not counted; (a) and (b) in two rounds,
the second in the reverse order):

  (a) 50 clients x 20 messages per connection, 10 kB
  (b) 50 clients x 1 message per connection (a TLS handshake per message), 10 kB
  (c) one 50 MB message: the server's RSS growth
  (d) 5,000 idle connections (past EHLO): RSS per connection
  (d') 2,000 idle connections past STARTTLS (information; the target is (d)'s)
  (e) the relay: 3,000 messages submitted as in (a) and relayed to a loopback
      sink, with DKIM signing and without (bench/relay.py); mailgw only
  (f) the HTTP API: 5,000 POST /api/v1/send/raw of 10 kB from 50 keep-alive
      connections (bench/api.py); mailgw only

--variants also runs mailgw patched with bench/levers.py (what-if experiments);
--servers mailgw,mailgw-w2 also runs it with [server] workers = 2.

Server CPU is /proc/PID/stat utime+stime (every thread) before and after;
peak RSS is VmHWM after resetting it (clear_refs), with VmRSS sampling as a
fall-back. The load generator's own CPU is shown too: near 100% it, not the
server, is the limit. "others CPU" is what the rest of the machine (other
processes, the kernel's softirqs, steal) used meanwhile, in % of one core: on
a shared 2-core machine a high value means the msg/s of that row are
depressed, while CPU s/1k msg stays comparable.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

from bench import api, haraka, load, postgres, relay, servers

MB = 1024 * 1024


@dataclass(frozen=True)
class Scale:
    clients: int = 50
    per_connection: int = 20
    size: int = 10 * 1024
    a_messages: int = 20000
    a_seconds: float = 20.0
    b_messages: int = 6000
    b_seconds: float = 20.0
    c_size: int = 50 * MB
    d_count: int = 5000
    d_tls_count: int = 2000
    e_messages: int = 3000
    f_messages: int = 5000
    f_seconds: float = 20.0
    warmup: int = 10
    #: seconds idle connections are left before the RSS is read
    settle: float = 1.5
    #: (a) and (b) are split in this many rounds, the servers' order reversed
    #: each round (ABBA), so that other load on the machine hits both alike
    rounds: int = 2


SCALES = {
    "full": Scale(),
    "quick": Scale(a_messages=3000, a_seconds=6, b_messages=1500, b_seconds=6,
                   d_count=1000, d_tls_count=500, e_messages=1000, f_messages=1500,
                   f_seconds=6),
    "smoke": Scale(clients=2, per_connection=2, a_messages=4, a_seconds=10, b_messages=2,
                   b_seconds=10, c_size=1 * MB, d_count=10, d_tls_count=4, e_messages=4,
                   f_messages=4, f_seconds=10, warmup=2, settle=0.2, rounds=1),
}

SCENARIOS = {
    "a": "(a) {clients}x{per_connection}/conn, {size_kb} kB",
    "b": "(b) {clients}x1/conn, {size_kb} kB",
    "c": "(c) 1 x {c_mb} MB",
    "d": "(d) {d_count} idle",
    "d'": "(d') {d_tls_count} idle TLS",
    "e": "(e) relay, {e_messages} messages",
    "f": "(f) HTTP API, {f_messages} messages",
}


@dataclass
class Row:
    scenario: str
    server: str
    messages: int = 0
    connections: int = 0
    errors: int = 0
    rate: float = 0.0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    wall: float = 0.0
    elapsed: float = 0.0
    server_cpu: float = 0.0
    #: of which in the kernel (system time)
    server_sys: float = 0.0
    client_cpu: float = 0.0
    #: CPU seconds the rest of the machine used meanwhile (other work, the kernel)
    other_cpu: float = 0.0
    rss_before_kb: int = 0
    rss_after_kb: int = 0
    peak_rss_kb: int = 0
    error_samples: list = field(default_factory=list)
    latencies: list = field(default_factory=list, repr=False)

    def merge(self, other: Row) -> Row:
        """This row and another round of the same scenario and server, as one."""
        for name in ("messages", "connections", "errors", "wall", "elapsed", "server_cpu",
                     "server_sys", "client_cpu", "other_cpu"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.peak_rss_kb = max(self.peak_rss_kb, other.peak_rss_kb)
        self.error_samples = (self.error_samples + other.error_samples)[:5]
        self.latencies = self.latencies + other.latencies
        self.rate = self.messages / self.wall if self.wall else 0.0
        self.p50, self.p95, self.p99 = percentiles(self.latencies)
        return self

    @property
    def cpu_per_1000(self) -> float | None:
        return self.server_cpu / self.messages * 1000 if self.messages else None

    @property
    def rss_growth_mb(self) -> float:
        return (self.peak_rss_kb - self.rss_before_kb) / 1024

    @property
    def rss_per_connection_kb(self) -> float | None:
        if not self.connections:
            return None
        return (self.rss_after_kb - self.rss_before_kb) / self.connections


# -- measuring one server ---------------------------------------------------------

class PeakSampler:
    """VmRSS sampled in a thread (the event loop is busy driving load)."""

    def __init__(self, pids: list[int], interval: float = 0.02):
        self.pids, self.interval = pids, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, _total(self.pids, "VmRSS"))
            except (OSError, KeyError):
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Profiler:
    """py-spy record on the server while it is measured (when asked): with
    C{mode} "gil" only the thread holding the GIL is sampled (where the CPU
    goes); with "wall" every thread that is not idle (waits on fsync too)."""

    def __init__(self, folder: str | None, name: str, pid: int, mode: str = "gil"):
        self.process = None
        if folder is None:
            return
        spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        if not os.path.exists(spy):
            print("bench: py-spy not installed; no profile", file=sys.stderr)
            return
        self.path = os.path.join(folder, f"{name}-{mode}.txt")
        self.process = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
             "--threads", "--nonblocking", "--output", self.path]
            + (["--gil"] if mode == "gil" else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached before the load starts

    def stop(self):
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _total(pids, field: str) -> int:
    return sum(servers.memory_kb(pid)[field] for pid in pids)


def _cpu(pids) -> float:
    return sum(servers.cpu_seconds(pid) for pid in pids)


def _sys(pids) -> float:
    return sum(servers.cpu_times(pid)[1] for pid in pids)


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _scenario(key: str, target: load.Target, scale: Scale, row: Row, pids):
    message = load.make_message(scale.size)
    if key == "a":
        return await load.run_messages(
            target, clients=scale.clients, per_connection=scale.per_connection,
            message=message, max_messages=scale.a_messages, max_seconds=scale.a_seconds)
    if key == "b":
        return await load.run_messages(
            target, clients=scale.clients, per_connection=1, message=message,
            max_messages=scale.b_messages, max_seconds=scale.b_seconds)
    if key == "c":
        return await load.run_large(target, scale.c_size)
    tls = key == "d'"
    count = scale.d_tls_count if tls else scale.d_count
    clients, result = await load.open_idle(target, count, tls=tls)
    await asyncio.sleep(scale.settle)  # let the server settle (timers, buffers)
    row.rss_after_kb = _total(pids, "VmRSS")
    await load.close_all(clients)
    await asyncio.sleep(scale.settle / 3)
    return result


async def _warm_up(target: load.Target, scale: Scale):
    await load.run_messages(target, clients=2, per_connection=scale.warmup // 2 or 1,
                            message=load.make_message(scale.size),
                            max_messages=scale.warmup, max_seconds=20)


class ServerDied(Exception):
    """A server process ended while it was measured."""


def measure(key: str, process: servers.ServerProcess, target_of, scale: Scale,
            label: str, profile_dir: str | None, profile_mode: str = "gil") -> Row:
    """One scenario against a fresh C{process}: warm up, then measure.

    @raise ServerDied: the process ended meanwhile (its exit status and log
        are in the message).
    """
    row = Row(label, process.name)
    process.start()
    profiler = None
    try:
        target = target_of(process)
        load.run(_warm_up(target, scale))
        name = f"{process.name}-{key.rstrip(chr(39))}" + ("-tls" if key == "d'" else "")
        profiler = Profiler(profile_dir, name, process.pid, profile_mode)
        try:
            result = _measured(key, target, scale, row, process.pids)
        except OSError as e:  # its /proc entry went away
            if process.alive():
                raise
            raise ServerDied(f"{process.name} ended during {label} "
                             f"(exit status {process.process.returncode}); its log: "
                             f"{process.log_path}") from e
    finally:
        if profiler is not None:
            profiler.stop()
        process.stop()
    row.messages, row.connections, row.errors = (result.messages, result.connections,
                                                 result.errors)
    row.wall, row.rate = result.wall, result.rate
    row.latencies = result.latencies
    row.p50, row.p95, row.p99 = percentiles(result.latencies)
    row.error_samples = result.error_samples
    return row


def percentiles(latencies) -> tuple:
    result = load.Result(latencies=latencies)
    return tuple(result.percentile(p) for p in (50, 95, 99))


def _measured(key: str, target: load.Target, scale: Scale, row: Row, pids: list[int]):
    row.rss_before_kb = _total(pids, "VmRSS")
    have_hwm = all([servers.reset_peak(pid) for pid in pids])  # noqa: C419 (reset every pid)
    cpu0, sys0, client0 = _cpu(pids), _sys(pids), client_cpu()
    busy0 = servers.machine_busy_seconds()
    started = time.perf_counter()
    with PeakSampler(pids) as sampler:
        result = load.run(_scenario(key, target, scale, row, pids))
    row.elapsed = time.perf_counter() - started
    row.server_cpu = _cpu(pids) - cpu0
    row.server_sys = _sys(pids) - sys0
    row.client_cpu = client_cpu() - client0
    row.other_cpu = max(0.0, servers.machine_busy_seconds() - busy0 - row.server_cpu
                        - row.client_cpu)
    row.peak_rss_kb = max(_total(pids, "VmHWM") if have_hwm else 0, sampler.peak)
    return result


# -- the table ------------------------------------------------------------------------

def _f(value, fmt="{:.1f}", none="-"):
    return none if value is None else fmt.format(value)


#: "others CPU" above this share of one core marks a row as measured on a busy machine
NOISY = 0.3


def _percent(cpu, elapsed):
    return f"{100 * cpu / elapsed:.0f}%" if elapsed else "-"


def render(rows: list[Row]) -> str:
    head = ("scenario", "server", "msgs", "conns", "msg/s", "p50 ms", "p95 ms", "p99 ms",
            "errors", "peak RSS MB", "CPU s/1k msg", "server CPU", "load gen CPU",
            "others CPU", "memory")
    lines = [head]
    for r in rows:
        rate, per_1000 = f"{r.rate:.0f}", _f(r.cpu_per_1000, "{:.2f}")
        if r.scenario.startswith("(c)"):
            rate, per_1000 = "-", "-"
            memory = (f"+{r.rss_growth_mb:.1f} MB RSS; {r.wall:.1f} s, "
                      f"{r.server_cpu:.2f} CPU s")
        elif r.scenario.startswith("(d"):
            rate = "-"
            memory = f"{_f(r.rss_per_connection_kb)} kB/conn"
        else:
            memory = ""
        noisy = r.elapsed and r.other_cpu / r.elapsed > NOISY
        lines.append((
            r.scenario, r.server + (" *" if noisy else ""), str(r.messages), str(r.connections), rate,
            _f(r.p50), _f(r.p95), _f(r.p99), str(r.errors),
            f"{r.peak_rss_kb / 1024:.1f}", per_1000,
            _percent(r.server_cpu, r.elapsed) + f" ({_percent(r.server_sys, r.server_cpu)} sys)",
            _percent(r.client_cpu, r.elapsed),
            _percent(r.other_cpu, r.elapsed), memory))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w)
                                       for i, (c, w) in enumerate(zip(line, widths))) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if any(r.elapsed and r.other_cpu / r.elapsed > NOISY for r in rows):
        out.append(f"\n* other work used more than {NOISY:.0%} of a core meanwhile: that "
                   "row's msg/s and latencies are depressed; CPU s/1k msg still compares.")
    return "\n".join(out)


#: the peers mailgw is measured against: servers that discard what they receive
PEERS = ("aiosmtpd", "haraka")


def targets(rows: list[Row]) -> list[tuple[str, bool]]:
    """(text, passed) for each target that this run measured: against the
    best peer of the same run (the one with the highest msg/s)."""
    by = {(r.scenario[:4].strip(), r.server): r for r in rows}
    found = []

    def pair(key):
        peers = [by[key, p] for p in PEERS if (key, p) in by and by[key, p].rate]
        return by.get((key, "mailgw")), max(peers, key=lambda r: r.rate, default=None)

    def against_best(key, minimum):
        mine, best = pair(key)
        if mine and best:
            ratio = mine.rate / best.rate
            found.append((f"{key} mailgw/{best.server} (best peer) msg/s = {mine.rate:.0f}/"
                          f"{best.rate:.0f} = {ratio:.2f}x (target >= {minimum}x)",
                          ratio >= minimum and not mine.errors))
        return mine

    mine = against_best("(a)", 1.3)
    if mine:
        found.append((f"(a) mailgw p99 final-dot latency = {_f(mine.p99)} ms "
                      "(target <= 100 ms)", mine.p99 is not None and mine.p99 <= 100))
        if mine.cpu_per_1000 is not None:
            found.append((f"(a) mailgw CPU per stored message = {mine.cpu_per_1000:.2f} ms "
                          "(target <= 1.0 ms)", mine.cpu_per_1000 <= 1.0))
    against_best("(b)", 1.1)
    sqlite, pg = by.get(("(a)", "mailgw")), by.get(("(a)", "mailgw-pg"))
    if sqlite and pg and sqlite.rate:
        ratio = pg.rate / sqlite.rate
        found.append((f"(a) mailgw on PostgreSQL/on SQLite msg/s = {pg.rate:.0f}/"
                      f"{sqlite.rate:.0f} = {ratio:.2f}x, p99 {_f(pg.p99)} ms "
                      "(target >= 0.9x, p99 <= 100 ms)",
                      ratio >= 0.9 and pg.p99 is not None and pg.p99 <= 100 and not pg.errors))
    mine, _ = pair("(c)")
    if mine:
        found.append((f"(c) mailgw RSS growth for the large message = "
                      f"{mine.rss_growth_mb:.1f} MB (target <= 32 MB)",
                      mine.rss_growth_mb <= 32 and mine.messages == 1))
    mine, _ = pair("(d)")
    if mine and mine.rss_per_connection_kb is not None:
        found.append((f"(d) mailgw RSS per idle connection = "
                      f"{mine.rss_per_connection_kb:.1f} kB (target <= 20 kB)",
                      mine.rss_per_connection_kb <= 20 and not mine.errors))
    return found


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = [f"load generator on {load.loop_name()}"]
    for name in ("twisted", "aiosmtpd"):
        try:
            from importlib.metadata import version
            versions.append(f"{name} {version(name)}")
        except Exception:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=servers.ROOT,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "mailgw"],
                               cwd=servers.ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        if dirty:
            commit += " (+ uncommitted changes in mailgw/)"
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    return (f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, "
            f"Python {platform.python_version()}, {ssl.OPENSSL_VERSION}, "
            f"{', '.join(versions)}, mailgw {commit}")


# -- main ---------------------------------------------------------------------------------

def raise_nofile(wanted: int) -> int:
    """More file descriptors for us and (inherited) for the servers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller budgets")
    size.add_argument("--smoke", action="store_true", help="a handful of messages")
    parser.add_argument("--scenarios", default="a,b,c,d,d',e,f",
                        help="comma-separated of a,b,c,d,d',e,f (default: all)")
    parser.add_argument("--servers", default="mailgw,mailgw-pg,aiosmtpd,haraka",
                        help="comma-separated of mailgw,mailgw-w2,mailgw-pg,aiosmtpd,haraka "
                             "(mailgw-w2: mailgw with [server] workers = 2, its CPU and memory "
                             "summed over both processes; mailgw-pg: mailgw on a durable "
                             "PostgreSQL; it and haraka are left out, with a note, when "
                             "PostgreSQL or npm are missing)")
    parser.add_argument("--variants", default="", metavar="LEVERS,...",
                        help="also measure mailgw patched with these lever sets "
                             "(bench/levers.py), e.g. nolog,nosync+notouch")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--profile", metavar="DIR",
                        help="py-spy record every measured server into DIR")
    parser.add_argument("--profile-mode", choices=("gil", "wall"), default="gil",
                        help="gil: where the CPU goes; wall: also threads in fsync")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    scale = SCALES["smoke" if args.smoke else "quick" if args.quick else "full"]
    keys = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown:
        print(f"bench: unknown scenario {unknown[0]!r}", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    nofile = raise_nofile(max(scale.d_count, scale.d_tls_count) * 2 + 1024)
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="mailgw-bench-")
    print(f"bench: {machine()}", flush=True)
    print(f"bench: RLIMIT_NOFILE {nofile}; work folder {folder}", flush=True)
    rows, relay_rows, api_row = [], [], None
    cluster = None
    try:
        cert, key_path = servers.write_certificate(folder)
        config = servers.write_mailgw_config(folder, cert, key_path)
        password = servers.seed_tenant(config)
        context = load.client_tls_context()
        processes = {"mailgw": lambda: servers.mailgw_process(folder, config),
                     "mailgw-w2": lambda: servers.mailgw_workers_process(folder, config, 2),
                     "aiosmtpd": lambda: servers.baseline_process(folder, cert, key_path,
                                                                  password)}
        passwords = {}
        if "mailgw-pg" in names and set(keys) - {"e", "f"}:
            cluster, pg_config, pg_password = postgres.start(folder, cert, key_path)
            if cluster is None:
                print(f"bench: going on without mailgw on PostgreSQL: {pg_config}", flush=True)
                names.remove("mailgw-pg")
            else:
                processes["mailgw-pg"] = lambda: postgres.process(pg_config)
                passwords["mailgw-pg"] = pg_password
        if "haraka" in names and set(keys) - {"e", "f"}:
            path, why = haraka.executable()
            if path is None:
                print(f"bench: going on without Haraka: {why}", flush=True)
                names.remove("haraka")
            else:
                processes["haraka"] = (
                    lambda: haraka.haraka_process(folder, cert, key_path, password)[0])
        for levers in filter(None, (v.strip() for v in args.variants.split(","))):
            processes[f"mailgw+{levers}"] = (
                lambda levers=levers: servers.mailgw_process(folder, config, levers))
            names.insert(names.index("aiosmtpd") if "aiosmtpd" in names else len(names),
                         f"mailgw+{levers}")
        labels = dict(clients=scale.clients, per_connection=scale.per_connection,
                      size_kb=scale.size // 1024, c_mb=scale.c_size // MB,
                      d_count=scale.d_count, d_tls_count=scale.d_tls_count,
                      e_messages=scale.e_messages, f_messages=scale.f_messages)
        def target_of(process):
            return load.Target(process.name, "127.0.0.1", process.port,
                               passwords.get(process.name, password), context)

        for key in keys:
            if key == "e":
                for dkim in (True, False):
                    row = relay.run(folder, cert, key_path, context,
                                    messages=scale.e_messages, clients=scale.clients,
                                    per_connection=scale.per_connection, size=scale.size,
                                    dkim=dkim)
                    print(f"bench: (e) relay, DKIM {'on' if dkim else 'off'}: "
                          f"{row['delivered']}/{row['messages']} delivered, "
                          f"{row['errors']} errors in {row['wall']:.1f} s", flush=True)
                    relay_rows.append(row)
                continue
            if key == "f":
                api_row = api.run(folder, cert, key_path, clients=scale.clients,
                                  messages=scale.f_messages, seconds=scale.f_seconds,
                                  size=scale.size)
                print(f"bench: (f) HTTP API: {api_row['messages']} msgs, {api_row['errors']} "
                      f"errors in {api_row['wall']:.1f} s"
                      + (f" ({'; '.join(api_row['error_samples'])})"
                         if api_row["error_samples"] else ""), flush=True)
                continue
            label = SCENARIOS[key].format(**labels)
            rounds = scale.rounds if key in ("a", "b") else 1
            share = dataclasses.replace(
                scale, a_messages=scale.a_messages // rounds, a_seconds=scale.a_seconds / rounds,
                b_messages=scale.b_messages // rounds, b_seconds=scale.b_seconds / rounds)
            merged = {}
            for round_ in range(rounds):
                for name in (names if round_ % 2 == 0 else names[::-1]):
                    started = time.monotonic()
                    for attempt in (1, 2):
                        try:
                            row = measure(key, processes[name](), target_of, share, label,
                                          args.profile and (args.profile if round_ == 0
                                                            else None),
                                          args.profile_mode)
                            break
                        except ServerDied as e:
                            # once more with a fresh process, then give up loudly
                            print(f"bench: {e}", file=sys.stderr, flush=True)
                            if attempt == 2:
                                raise
                    print(f"bench: {label} {name}: {row.messages} msgs, {row.connections} "
                          f"conns, {row.errors} errors in {time.monotonic() - started:.1f} s"
                          + (f" ({'; '.join(row.error_samples)})" if row.error_samples
                             else ""), flush=True)
                    merged[name] = merged[name].merge(row) if name in merged else row
            rows += [merged[name] for name in names]
    finally:
        if cluster is not None:
            cluster.destroy()
        if args.keep:
            print(f"bench: kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print()
    print(render(rows))
    if relay_rows:
        print()
        print(relay.render(relay_rows))
    if api_row is not None:
        print()
        print(api.render(api_row))
    print()
    results = targets(rows)
    for text, passed in results:
        print(f"{'PASS' if passed else 'FAIL'}  {text}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "rows": [
                dict({k: v for k, v in asdict(r).items() if k != "latencies"},
                     cpu_per_1000=r.cpu_per_1000, rss_growth_mb=r.rss_growth_mb,
                     rss_per_connection_kb=r.rss_per_connection_kb) for r in rows],
                "relay": relay_rows, "http_api": api_row,
                "targets": [{"text": t, "passed": p} for t, p in results]}, f, indent=2)
    if args.smoke and (any(r.errors for r in rows) or any(
            r["errors"] or r["delivered"] != r["messages"] for r in relay_rows)
            or (api_row is not None and api_row["errors"])):
        return 1
    if args.strict and not all(p for _, p in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
