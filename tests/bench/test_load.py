"""The load generator's client (bench/load.py) against a scripted server on
loopback: the exchange it drives, its counts, and how it fails."""
from __future__ import annotations

import asyncio
import os
import ssl
import tempfile

from twisted.trial import unittest

from bench import load
from mailgw.admin.devsetup import make_certificate


def server_context() -> ssl.SSLContext:
    cert, key = make_certificate("localhost")
    folder = tempfile.mkdtemp(prefix="mailgw-load-test")
    paths = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    for path, data in zip(paths, (cert, key)):
        with open(path, "wb") as f:
            f.write(data)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*paths)
    return context


class ScriptedServer:
    """An SMTP server that answers as told, split into single bytes when
    C{dribble}, and notes every command it read.

    @ivar answers: command word -> reply bytes (C{None}: never answer;
        C{b""}: hang up).
    """

    def __init__(self, context: ssl.SSLContext, dribble: bool = False, hang_up_after=(),
                 **answers):
        self.context = context
        self.hang_up_after = hang_up_after
        self.dribble = dribble
        self.sessions = []
        self.bodies = []
        self.answers = {
            "EHLO": b"250-test.example\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n",
            "STARTTLS": b"220 go ahead\r\n", "AUTH": b"235 ok\r\n", "MAIL": b"250 ok\r\n",
            "RCPT": b"250 ok\r\n", "DATA": b"354 go on\r\n", ".": b"250 queued\r\n",
            "QUIT": b"221 bye\r\n"}
        self.answers.update({k.replace("dot", "."): v for k, v in answers.items()})

    @property
    def commands(self) -> list[str]:
        return [word for commands in self.sessions for word in commands]

    async def send(self, writer, data: bytes) -> None:
        for piece in ([data[i:i + 1] for i in range(len(data))] if self.dribble else [data]):
            writer.write(piece)
            await writer.drain()

    async def handle(self, reader, writer) -> None:
        commands = []
        self.sessions.append(commands)
        await self.send(writer, b"220 scripted\r\n")
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                word = line.split(b" ", 1)[0].strip().decode()
                commands.append(word)
                if word == "DATA":
                    await self.send(writer, self.answers["DATA"])
                    body = await reader.readuntil(b"\r\n.\r\n")
                    self.bodies.append(body)
                    word = "."
                    commands.append(word)
                answer = self.answers[word]
                if answer is None:  # until the client gives up
                    await reader.read()
                    return
                if not answer:
                    return
                await self.send(writer, answer)
                if word in self.hang_up_after:
                    return
                if word == "STARTTLS":
                    await writer.start_tls(self.context)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def drive(server: ScriptedServer, **kwargs) -> load.Result:
    async def main():
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        target = load.Target("scripted", "127.0.0.1", port, "secret-key",
                             load.client_tls_context())
        try:
            return await load.run_messages(target, **kwargs)
        finally:
            listener.close()
    return load.run(main())


class RunMessagesTest(unittest.TestCase):
    context = server_context()

    def test_counts_every_message_and_connection(self):
        """Two clients, two messages per connection, five in all: the
        budget is kept, each connection does the whole exchange in order,
        and every message is the one given."""
        server = ScriptedServer(self.context)
        message = load.numbered(load.make_message(1024))
        result = drive(server, clients=2, per_connection=2, message=message,
                       max_messages=5, max_seconds=30)
        self.assertEqual((result.messages, result.errors, len(result.latencies)), (5, 0, 5))
        self.assertEqual(result.connections, server.commands.count("AUTH"))
        self.assertGreaterEqual(result.connections, 3)
        self.assertEqual(sorted(result.accepted),
                         sorted(f"bench message {i}".encode() for i in range(5)))
        transaction = ["MAIL", "RCPT", "DATA", "."]
        for commands in server.sessions:
            self.assertEqual(commands[:4], ["EHLO", "STARTTLS", "EHLO", "AUTH"])
            self.assertEqual(commands[-1], "QUIT")
            # none when the others took the budget's last message meanwhile
            self.assertIn(commands[4:-1], ([], transaction, transaction * 2), commands)
        self.assertTrue(all(b.endswith(b"\r\n.\r\n") and b"Subject: bench message" in b
                            for b in server.bodies))

    def test_replies_in_single_bytes(self):
        """Replies that arrive a byte at a time, multi-line EHLO included,
        are read as whole replies."""
        server = ScriptedServer(self.context, dribble=True)
        result = drive(server, clients=1, per_connection=1,
                       message=load.make_message(512), max_messages=2, max_seconds=30)
        self.assertEqual((result.messages, result.errors, result.connections), (2, 0, 2))

    def test_unexpected_reply_is_an_error(self):
        """A refused RCPT counts as an error, names the command and the
        reply, and the client goes on with a new connection."""
        server = ScriptedServer(self.context, RCPT=b"550 5.7.1 no thanks\r\n")
        result = drive(server, clients=1, per_connection=1,
                       message=load.make_message(512), max_messages=3, max_seconds=0.5)
        self.assertEqual(result.messages, 0)
        self.assertGreaterEqual(result.errors, 2)
        self.assertEqual(result.error_samples[0], "SMTPError: RCPT: 550 5.7.1 no thanks")

    def test_a_reply_during_starttls_is_an_error(self):
        """A line after the 220 to STARTTLS, before the handshake, ends
        the session with an error (it would be read as plaintext)."""
        server = ScriptedServer(self.context, STARTTLS=b"220 go ahead\r\n220 sneaked in\r\n")
        result = drive(server, clients=1, per_connection=1,
                       message=load.make_message(512), max_messages=1, max_seconds=0.1)
        self.assertEqual(result.messages, 0)
        self.assertEqual(result.error_samples[0], "SMTPError: STARTTLS: 220 sneaked in")

    def test_a_hang_up_instead_of_the_handshake_is_one_quiet_error(self):
        """A server that answers STARTTLS and hangs up: one error per
        session, and nothing in asyncio's log (no task left unread)."""
        server = ScriptedServer(self.context, hang_up_after=("STARTTLS",))
        with self.assertNoLogs("asyncio", level="ERROR"):
            result = drive(server, clients=2, per_connection=1,
                           message=load.make_message(512), max_messages=2, max_seconds=0.2)
        self.assertEqual(result.messages, 0)
        self.assertGreaterEqual(result.errors, 2)
        self.assertEqual(result.connections, 0)

    def test_a_bug_of_the_generator_is_raised_not_counted(self):
        """An exception of the generator's own (here the message maker's)
        stops the run instead of passing for a server's failure."""
        def broken(index):
            raise KeyError("no message")
        with self.assertRaises(KeyError):
            drive(ScriptedServer(self.context), clients=1, per_connection=1, message=broken,
                  max_messages=1, max_seconds=5)

    def test_silent_server_times_out(self):
        """A final dot that is never answered ends in a timeout error,
        within the reply timeout, not a hang."""
        self.patch(load, "REPLY_TIMEOUT", 0.4)
        server = ScriptedServer(self.context, dot=None)
        result = drive(server, clients=1, per_connection=1,
                       message=load.make_message(512), max_messages=1, max_seconds=0.1)
        self.assertEqual((result.messages, result.errors), (0, 1))
        self.assertEqual(result.error_samples, ["TimeoutError: final dot: no reply"])
        self.assertLess(result.wall, 5)

    def test_closed_connection_is_an_error(self):
        """A server that hangs up instead of answering is an error."""
        server = ScriptedServer(self.context, AUTH=b"")
        result = drive(server, clients=1, per_connection=1,
                       message=load.make_message(512), max_messages=1, max_seconds=0.1)
        self.assertEqual(result.messages, 0)
        self.assertGreaterEqual(result.errors, 1)
        self.assertEqual(set(result.error_samples), {"EOFError: connection closed by the server"})


class StockLoopTest(RunMessagesTest):
    """The same on asyncio's own loop (C{BENCH_LOOP=asyncio}), where
    C{start_tls} and the transports are asyncio's, not uvloop's."""

    def setUp(self):
        self.patch(os, "environ", dict(os.environ, BENCH_LOOP="asyncio"))
        self.assertEqual(load.loop_name(), "asyncio")


class LoopTest(unittest.TestCase):
    def test_uvloop_when_installed(self):
        """With the bench extra installed, the generator runs on uvloop."""
        if load.uvloop is None:
            message = "uvloop is not installed (pip install -e '.[bench]')"
            if os.environ.get("CI") == "true":
                self.fail(message + " (CI=true: a missing tool fails the test)")
            raise unittest.SkipTest(message)
        self.assertTrue(load.loop_name().startswith("uvloop "))
        self.assertTrue(issubclass(load.run(self._loop_type()), load.uvloop.Loop))

    @staticmethod
    async def _loop_type():
        return type(asyncio.get_running_loop())
