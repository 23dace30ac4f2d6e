"""Scenario (f) of ``make bench``: the HTTP API's submission rate.

A gateway with ``[http_api]`` on (plain HTTP on loopback, as the default
config) takes ``POST /api/v1/send/raw`` from ``clients`` concurrent
keep-alive connections, each request one 10 kB message (base64 in JSON), with
an ``api`` credential's key. The row's rate is the messages answered
``"status": "success"`` per second, its latencies those of each request.
There is no peer for it: Postal's API is the reference, and it is not run here.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time

from bench import load, servers

HTTP_LISTENING = re.compile(r"HTTP API listening on \S+ at \S+ port (\d+)")


class APIProcess(servers.ServerProcess):
    """The gateway, whose port of interest is the HTTP API's."""

    def listening(self, text: str) -> int | None:
        m = HTTP_LISTENING.search(text)
        return int(m.group(1)) if m else None


def api_config(folder: str, cert: str, key: str) -> tuple[str, str]:
    """A gateway of its own in C{folder} with the HTTP API on a free port;
    the config's path and an api credential's key."""
    os.makedirs(folder)
    config = servers.write_mailgw_config(folder, cert, key)
    with open(config, "a") as f:
        f.write('[http_api]\nendpoint = "tcp:0:interface=127.0.0.1:backlog=1024"\n'
                "max_connections = 20000\nmax_connections_per_ip = 20000\n")
    servers.seed_tenant(config)
    credential = servers.mailgw_cli(config, "credential", "add",
                                    f"{servers.ORG}/{servers.SERVER}", "--type", "api",
                                    "--name", "bench-api")
    return config, credential["key"]


def request_bytes(port: int, key: str, size: int) -> bytes:
    message = load.make_message(size)[:-3]  # without SMTP's final dot
    body = json.dumps({"mail_from": load.SENDER, "rcpt_to": [load.RECIPIENT],
                       "data": base64.b64encode(message).decode()}).encode()
    return (f"POST /api/v1/send/raw HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"X-Server-API-Key: {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _client(port: int, request: bytes, budget: load.Budget, result: load.Result):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    result.connections += 1
    try:
        while budget.take():
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            answer = json.loads(await reader.readexactly(length))
            if answer.get("status") == "success":
                result.latencies.append(time.perf_counter() - start)
                result.messages += 1
            else:
                result.failed(RuntimeError(json.dumps(answer)[:200]))
    finally:
        writer.close()


async def _drive(port: int, request: bytes, clients: int, messages: int,
                 seconds: float) -> load.Result:
    result, budget = load.Result(), load.Budget(messages, seconds)
    start = time.perf_counter()
    outcomes = await asyncio.gather(*(_client(port, request, budget, result)
                                      for _ in range(clients)), return_exceptions=True)
    result.wall = time.perf_counter() - start
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.failed(outcome)
    return result


def run(folder: str, cert: str, key: str, *, clients: int, messages: int, seconds: float,
        size: int) -> dict:
    """One measurement against a fresh gateway in a new folder under C{folder}."""
    home = os.path.join(folder, "http-api")
    config, api_key = api_config(home, cert, key)
    process = APIProcess("mailgw", servers.mailgw_process(home, config).argv, home,
                         "twistd.log", ready="store open: accepting mail")
    process.start()
    try:
        request = request_bytes(process.port, api_key, size)
        load.run(_drive(process.port, request, 2, 10, 30))  # warm-up, not counted
        cpu0 = servers.cpu_seconds(process.pid)
        result = load.run(_drive(process.port, request, clients, messages, seconds))
        cpu = servers.cpu_seconds(process.pid) - cpu0
    finally:
        process.stop()
    return {"messages": result.messages, "errors": result.errors,
            "error_samples": result.error_samples, "wall": result.wall,
            "rate": result.rate, "p50": result.percentile(50), "p95": result.percentile(95),
            "p99": result.percentile(99),
            "cpu_ms_per_message": cpu / result.messages * 1000 if result.messages else None}


def render(row) -> str:
    """The scenario's table."""
    def ms(value):
        return "-" if value is None else f"{value:.1f}"
    cpu = row["cpu_ms_per_message"]
    return "\n".join([
        "| (f) HTTP API /send/raw, 10 kB | messages | errors | msg/s | p50 / p95 / p99 ms "
        "| server CPU ms/msg |",
        "|---|---|---|---|---|---|",
        f"| mailgw | {row['messages']} | {row['errors']} | {row['rate']:.0f} "
        f"| {ms(row['p50'])} / {ms(row['p95'])} / {ms(row['p99'])} "
        f"| {'-' if cpu is None else f'{cpu:.2f}'} |"])
