"""The pipes between twistd's process and a worker.

  - the worker's standard input: one line from twistd's process, the JSON
    L{Handshake} (the config it read, as TOML data: a worker never reads the
    file, which may have been edited since; and the TLS certificate and key
    it serves, which it may have read as root), then nothing; its end of file
    means twistd's process is gone, and the worker stops;
  - the worker's standard output: one JSON object a line, either a log
    event in the shape of C{mailgw.logs.event_as_json} or a notice
    (C{{"notice": "enqueued"}}: a message was committed, for the relay);
  - the worker's standard error: text (what Python writes before logging
    starts), logged line by line.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field


from mailgw.config import Config, config_as_data, parse_config
from mailgw.logs import BufferedLogObserver, event_as_json

#: the notice a worker sends after each committed enqueue
ENQUEUED = "enqueued"


@dataclass(frozen=True)
class Handshake:
    """What a worker is told at start, on its standard input."""
    config: Config
    #: whether to send L{ENQUEUED} notices (twistd's process runs a relay)
    notify_enqueued: bool
    #: the PEM certificate chain and key twistd's process serves, or C{None}
    tls_pem: tuple[bytes, bytes] | None = field(default=None, repr=False)

    def encode(self) -> bytes:
        pem = None if self.tls_pem is None else [p.decode("ascii") for p in self.tls_pem]
        return json.dumps({"config": config_as_data(self.config),
                           "source": self.config.source,
                           "notify_enqueued": self.notify_enqueued,
                           "tls_pem": pem}).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Handshake:
        """@raise ValueError: not a handshake (or its config does not parse)."""
        data = json.loads(line)
        pem = data.get("tls_pem")
        return cls(parse_config(data["config"], source=data["source"]),
                   bool(data["notify_enqueued"]),
                   None if pem is None else tuple(p.encode("ascii") for p in pem))


def read_handshake(fd: int = 0) -> Handshake:
    """Read the handshake line from C{fd} (blocking: before the reactor runs).

    @raise ValueError: the pipe ended first, or the line is not a handshake.
    """
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 65536)
        if not chunk:
            raise ValueError("no handshake from the main process")
        data += chunk
    return Handshake.decode(data.split(b"\n", 1)[0])


class ParentChannel:
    """In a worker: its standard output, the pipe to twistd's process.

    Each log line and notice is written whole, under a lock, with plain
    C{os.write} calls: store threads log too, and two lines must never mix.
    It is the file of the worker's log observer (L{observer}).
    """

    def __init__(self, fd: int = 1):
        self.fd = fd
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        self._send(text.encode("utf-8", "replace"))

    def flush(self) -> None:
        """Nothing to do: every write is whole."""

    def notice(self, name: str) -> None:
        self._send(json.dumps({"notice": name}).encode() + b"\n")

    def _send(self, data: bytes) -> None:
        with self._lock:
            while data:
                data = data[os.write(self.fd, data):]

    def observer(self, clock) -> BufferedLogObserver:
        """A log observer sending every event to twistd's process, a few
        lines at a time as twistd's process writes them (L{mailgw.logs}).

        @param clock: the reactor.
        """
        return BufferedLogObserver(self, event_as_json, clock)
