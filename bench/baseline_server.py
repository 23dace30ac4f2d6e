"""The baseline: an aiosmtpd server with STARTTLS and AUTH PLAIN that accepts
every message and discards it (aiosmtpd's best case: no storage, no fsync).

``python -m bench.baseline_server --port 0 --certificate C --private-key K``
with the expected password in ``$MAILGW_BENCH_KEY``. It prints mailgw's
"listening on ... at HOST port N (tls=starttls" line once it is bound, and
stops on SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import signal
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

HOSTNAME = "bench.aiosmtpd.test"


class DiscardHandler:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK: discarded"


def authenticator_for(password: bytes):
    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (mechanism == "PLAIN" and isinstance(auth_data, LoginPassword)
              and hmac.compare_digest(auth_data.password, password))
        return AuthResult(success=ok)
    return authenticate


def tls_context(certificate: str, private_key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, private_key)
    return context


async def serve(args) -> None:
    loop = asyncio.get_running_loop()
    context = tls_context(args.certificate, args.private_key)
    handler = DiscardHandler()
    authenticate = authenticator_for(os.environ.get("MAILGW_BENCH_KEY", "").encode())

    def factory():
        return SMTP(handler, hostname=HOSTNAME, tls_context=context, require_starttls=True,
                    auth_required=True, auth_require_tls=True,
                    authenticator=authenticate, data_size_limit=args.max_size, loop=loop)

    server = await loop.create_server(factory, args.host, args.port, backlog=1024)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on tcp:{args.port} at {host} port {port} (tls=starttls)", flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    server.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--certificate", required=True)
    parser.add_argument("--private-key", required=True)
    parser.add_argument("--max-size", type=int, default=64 * 1024 * 1024)
    args = parser.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
