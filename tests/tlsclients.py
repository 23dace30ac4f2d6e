"""Throwaway certificates and real TLS clients for the TLS tests.

The clients are the ones operators and mail programs use: C{openssl
s_client} (a child process) and Python's C{ssl} module. Both block, so a
trial test that serves TLS from its own reactor runs them with
C{deferToThread}; the end-to-end tests, whose gateway is another process,
call them directly.
"""
from __future__ import annotations

import os
import socket
import ssl
import subprocess

from cryptography import x509

from mailgw.admin.devsetup import make_certificate

from tests.e2e.gateway import require_tool


def make_pair(hostname: str = "localhost", *, key_type: str = "ec",
              days: float = 3650) -> tuple[bytes, bytes, x509.Certificate]:
    """A self-signed certificate and its key (L{make_certificate}'s).

    @param key_type: C{"ec"} (P-256, as C{make run} writes) or C{"rsa"}
        (2048 bits), for tests of cipher suites that need an RSA key.
    @param days: how long from now the certificate is valid (notAfter).
    @return: C{(certificate PEM, unencrypted PKCS#8 key PEM, certificate)}.
    """
    cert_pem, key_pem = make_certificate(hostname, days=days, key_type=key_type)
    return cert_pem, key_pem, x509.load_pem_x509_certificate(cert_pem)


def write_file(path: str, data: bytes, mtime: float | None = None) -> None:
    """Replace C{path} with C{data} at once (as a renewal tool does), with
    C{mtime} as its modification time when given."""
    with open(path + ".new", "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path + ".new", (mtime, mtime))
    os.replace(path + ".new", path)


def insecure_context() -> ssl.SSLContext:
    """A client context that does not check the (self-signed) certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def python_handshake(port: int, context: ssl.SSLContext | None = None) -> dict:
    """Connect to 127.0.0.1:C{port} with implicit TLS, send C{EHLO} after the
    handshake and read the replies.

    @return: C{version}, C{cipher}, C{serial} (of the served certificate),
        C{alpn} (the negotiated protocol or None) and C{reply} (the bytes read
        after the handshake up to the end of the EHLO reply).
    @raise ssl.SSLError: the handshake failed.
    """
    context = context or insecure_context()
    with socket.create_connection(("127.0.0.1", port), 30) as raw:
        with context.wrap_socket(raw) as tls:
            reply = _read_reply(tls)
            tls.sendall(b"EHLO python.client\r\n")
            reply += _read_reply(tls)
            tls.sendall(b"QUIT\r\n")
            certificate = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            return {"version": tls.version(), "cipher": tls.cipher()[0],
                    "serial": certificate.serial_number,
                    "alpn": tls.selected_alpn_protocol(), "reply": reply}


def _read_reply(tls) -> bytes:
    """One whole SMTP reply (the last line has a space after the code)."""
    data = b""
    while True:
        chunk = tls.recv(4096)
        if not chunk:
            return data
        data += chunk
        if data.endswith(b"\r\n") and data.split(b"\r\n")[-2][3:4] == b" ":
            return data


def s_client(port: int, *args: str, starttls: bool = False,
             send: bytes = b"EHLO openssl.client\r\nQUIT\r\n") -> tuple[int, str]:
    """Run C{openssl s_client} against 127.0.0.1:C{port}.

    @param args: more s_client options (C{-tls1_2}, C{-cipher ...}, C{-curves
        ...}, C{-alpn ...}).
    @param starttls: upgrade with SMTP STARTTLS first (C{-starttls smtp}).
    @param send: the lines written once TLS is up; s_client waits for the
        server to close (C{-ign_eof}), so the last one should be QUIT.
    @return: the exit status and everything it printed (stdout and stderr).
    """
    command = [require_tool("openssl"), "s_client", "-connect", f"127.0.0.1:{port}",
               "-servername", "localhost", "-ign_eof", *args]
    if starttls:
        command += ["-starttls", "smtp"]
    result = subprocess.run(command, input=send, capture_output=True, timeout=60)
    return result.returncode, (result.stdout + result.stderr).decode("utf-8", "replace")
