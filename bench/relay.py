"""Scenario (e) of ``make bench``: the relay's throughput, DKIM on and off.

A gateway with ``[relay]`` on, its smarthost a discarding aiosmtpd sink in
this process (plain text, no AUTH: the relay's own cost is what is
measured). The load generator submits ``e_messages`` messages as in (a)
while the relay delivers them; the row's rate is the messages the sink
received per second, from the first submission to the last delivery, and
its latency percentiles the time from a message's ``250`` to its arrival
at the sink. "DKIM off" is the same gateway with the ``nodkim`` lever
(bench/levers.py): every message sent as stored, unsigned.
"""
from __future__ import annotations

import os
import threading
import time

from aiosmtpd.controller import Controller

from bench import load, servers

#: relay settings for the scenario: poll often, many deliveries at once
RELAY_TABLE = ("[relay]\nenabled = true\nsmarthost = \"127.0.0.1:{port}\"\ntls = \"none\"\n"
               "poll_interval = 0.1\nconcurrency = 20\n")


class CountingSink:
    """An aiosmtpd handler that discards messages and notes when each
    arrived, by the Subject's index (see L{bench.load.make_message})."""

    def __init__(self):
        self.arrived: dict[bytes, float] = {}
        self.count = 0
        self.signed = 0
        self._lock = threading.Lock()
        self.all_in = threading.Event()
        self.expected = None

    async def handle_DATA(self, server, session, envelope):
        now = time.perf_counter()
        data = envelope.original_content or envelope.content or b""
        subject = data.split(b"\nSubject: ", 1)[-1].split(b"\r\n", 1)[0]
        with self._lock:
            self.count += 1
            self.signed += data[:15].lower() == b"dkim-signature:"
            self.arrived.setdefault(subject, now)
            if self.expected is not None and self.count >= self.expected:
                self.all_in.set()
        return "250 OK: discarded"


def relay_config(folder: str, cert: str, key: str, port: int) -> tuple[str, str]:
    """A gateway of its own in C{folder} (a fresh, seeded database: nothing
    queued by other scenarios), with the relay on, to the sink at C{port}.

    @return: the config's path and the credential's key.
    """
    os.makedirs(folder)
    config = servers.write_mailgw_config(folder, cert, key)
    with open(config) as f:
        text = f.read().replace("[relay]\nenabled = false\n", "")
    with open(config, "w") as f:
        f.write(text + RELAY_TABLE.format(port=port))
    return config, servers.seed_tenant(config)


def run(folder: str, cert: str, key: str, context, *, messages: int, clients: int,
        per_connection: int, size: int, dkim: bool, timeout: float = 300.0) -> dict:
    """One relay measurement against a fresh gateway in a new folder under
    C{folder}.

    @return: a dict of the measured values (messages, delivered, signed,
        rate, p50/p95/p99 seconds, server CPU seconds, wall seconds).
    """
    sink = CountingSink()
    port = servers.free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        home = os.path.join(folder, f"relay-dkim-{'on' if dkim else 'off'}")
        config, password = relay_config(home, cert, key, port)
        process = servers.mailgw_process(home, config, "" if dkim else "nodkim")
        process.start()
        try:
            target = load.Target(process.name, "127.0.0.1", process.port, password, context)
            cpu0 = servers.cpu_seconds(process.pid)
            started = time.perf_counter()
            result = load.run(load.run_messages(
                target, clients=clients, per_connection=per_connection,
                message=load.numbered(load.make_message(size)), max_messages=messages,
                max_seconds=timeout))
            sink.expected = result.messages
            if sink.count >= result.messages:
                sink.all_in.set()
            sink.all_in.wait(timeout)
            finished = max(sink.arrived.values(), default=time.perf_counter())
            cpu = servers.cpu_seconds(process.pid) - cpu0
        finally:
            process.stop()
    finally:
        controller.stop()
    wall = finished - started
    # the generator's latencies are submission times; the relay's are
    # arrival minus acceptance, which it notes per message index
    delays = sorted(sink.arrived[s] - accepted for s, accepted in result.accepted.items()
                    if s in sink.arrived)
    pick = load.Result(latencies=delays).percentile  # in milliseconds
    return {"dkim": dkim, "messages": result.messages, "delivered": sink.count,
            "signed": sink.signed, "errors": result.errors, "wall": wall,
            "rate": sink.count / wall if wall > 0 else 0.0,
            "p50": pick(50), "p95": pick(95), "p99": pick(99), "server_cpu": cpu,
            "cpu_ms_per_message": cpu / sink.count * 1000 if sink.count else None}


def render(rows) -> str:
    """The scenario's table."""
    lines = ["| (e) relay to a loopback sink | submitted | delivered | signed | delivered/s "
             "| accept→sink p50 / p99 ms | server CPU ms/msg |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        p50 = "-" if row["p50"] is None else f"{row['p50']:.0f}"
        p99 = "-" if row["p99"] is None else f"{row['p99']:.0f}"
        cpu = row["cpu_ms_per_message"]
        lines.append(f"| mailgw, DKIM {'on' if row['dkim'] else 'off'} | {row['messages']} "
                     f"| {row['delivered']} | {row['signed']} | {row['rate']:.0f} "
                     f"| {p50} / {p99} | {'-' if cpu is None else f'{cpu:.2f}'} |")
    return "\n".join(lines)
