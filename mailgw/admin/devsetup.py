"""``make run``'s first step: a development gateway that works out of the box.

``python -m mailgw.admin.devsetup --config var/mailgw.toml`` writes the config
file and a self-signed certificate when they are missing, brings the database
schema up to date, creates a demo organization, server, verified domain and
SMTP credential on an empty database, and prints that credential's key with
ready-to-paste client command lines. Every run after the first changes nothing
and prints the same key again.
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
from pathlib import Path

from mailgw.config import ConfigError, load_config
from mailgw.interfaces import StoreUnavailable
from mailgw.model import generate_key
from mailgw.store.files import private_directory

DEMO_ORG, DEMO_SERVER, DEMO_DOMAIN, DEMO_CREDENTIAL = "demo", "main", "example.com", "demo"

CONFIG_TEMPLATE = """\
# Development config written by `make run` (python -m mailgw.admin.devsetup).
# Relative paths resolve against this file's folder. Every key is listed with
# its default and meaning in etc/mailgw.toml.example.
hostname = "localhost"
spool_directory = "spool"

[database]
url = "sqlite:mailgw.sqlite3"

[relay]
# Accepted mail stays in the queue (see `mailgw queue list`): a development
# gateway should not send real mail by surprise. Set true, and a smarthost, to
# deliver it.
enabled = false

[metrics]
# /health and /metrics
endpoint = "tcp:9091:interface=127.0.0.1"

[auth_throttle]
# You, trying things on this machine, are never locked out by a mistyped key.
# In production exempt only networks you trust: a lock-out there also stops
# guesses from anyone who reaches the gateway through them.
exempt = ["127.0.0.0/8", "::1"]

[tls]
# A self-signed certificate for localhost and 127.0.0.1, made on first run.
certificate = "tls/cert.pem"
private_key = "tls/key.pem"

[[listeners]]
endpoint = "tcp:2525:interface=127.0.0.1"
tls = "starttls"
# AUTH only after STARTTLS, as in production. To try AUTH over plain text
# (e.g. with a client that cannot do TLS), set this to false.
auth_requires_tls = true

[[listeners]]
endpoint = "tcp:2465:interface=127.0.0.1"
tls = "implicit"
auth_requires_tls = true
"""


def say(message: str) -> None:
    print(f"devsetup: {message}")


def write_config(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CONFIG_TEMPLATE, encoding="utf-8")
    say(f"wrote {path}")


def make_certificate(hostname: str = "localhost", years: int = 10) -> tuple[bytes, bytes]:
    """A self-signed EC P-256 certificate for C{hostname} and 127.0.0.1.

    @return: C{(certificate PEM, private key PEM)}.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * years))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(hostname),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_certificate(certificate: str, private_key: str) -> None:
    """Write a fresh pair unless both files are there already."""
    if os.path.exists(certificate) and os.path.exists(private_key):
        return
    cert_pem, key_pem = make_certificate()
    for path in (certificate, private_key):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # The key is created private (0600), never readable for a moment.
    fd = os.open(private_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    with open(certificate, "wb") as f:
        f.write(cert_pem)
    say(f"wrote a self-signed certificate for localhost: {certificate}")


async def demo_key(store) -> str | None:
    """The demo credential's key, creating the demo tenant on an empty
    database. C{None} when the database has other tenants but no demo."""
    from mailgw.interfaces import NotFound
    if not await store.list_organizations():
        server = (DEMO_ORG, DEMO_SERVER)
        await store.add_organization(DEMO_ORG, "Demo")
        await store.add_server(DEMO_ORG, DEMO_SERVER, "Demo mail server")
        await store.add_domain(DEMO_DOMAIN, server=server, verified=True)
        credential = await store.add_credential(server, "smtp", generate_key(),
                                                name=DEMO_CREDENTIAL)
        say(f"created organization {DEMO_ORG}, server {DEMO_ORG}/{DEMO_SERVER}, "
            f"verified domain {DEMO_DOMAIN} and SMTP credential {DEMO_CREDENTIAL!r}")
        return credential.key
    try:
        credentials = await store.list_credentials((DEMO_ORG, DEMO_SERVER))
    except NotFound:
        return None
    for credential in credentials:
        if credential.type == "smtp" and credential.name == DEMO_CREDENTIAL:
            return credential.key
    return None


def prepare_store(config) -> str | None:
    """Upgrade the schema and find (or make) the demo key, under react."""
    from twisted.internet.task import react

    from mailgw.store import open_store
    found = []

    async def main(reactor):
        store = open_store(config.database.url, reactor, config.database.pool_size)
        try:
            await store.start()
            await store.upgrade()
            found.append(await demo_key(store))
        except Exception as e:  # raised again below, outside the reactor
            found.append(e)
        finally:
            await store.close()

    try:
        react(main)
    except SystemExit:
        pass
    if isinstance(found[0], Exception):
        raise found[0]
    return found[0]


def submission_address(config) -> tuple[str, int]:
    """Host and port of the first STARTTLS TCP listener (the one to try)."""
    for listener in config.listeners:
        m = re.match(r"^tcp:(\d+)(?::.*interface=([^:]+))?", listener.endpoint)
        if m and listener.tls == "starttls":
            return m.group(2) or "127.0.0.1", int(m.group(1))
    return "127.0.0.1", 2525


def instructions(key: str, host: str, port: int) -> str:
    smtplib_line = (
        f"python3 -c 'import smtplib; s = smtplib.SMTP(\"{host}\", {port}); s.starttls(); "
        f"s.login(\"any\", \"{key}\"); s.sendmail(\"you@example.com\", "
        "[\"someone@example.net\"], \"From: you@example.com\\r\\nSubject: hello\\r\\n\\r\\nHello.\\r\\n\"); s.quit()'")
    return "\n".join([
        f"demo credential key (server {DEMO_ORG}/{DEMO_SERVER}): {key}",
        "try it:",
        f"  swaks --server {host}:{port} --tls --auth PLAIN --auth-user any "
        f"--auth-password {key} --from you@example.com --to someone@example.net",
        f"  {smtplib_line}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mailgw.admin.devsetup",
        description="Write a development config, certificate and demo tenant.")
    parser.add_argument("--config", default="var/mailgw.toml", metavar="FILE")
    args = parser.parse_args(argv)
    path = Path(args.config)
    try:
        if not path.exists():
            write_config(path)
        config = load_config(path)
        if config.tls is not None:
            ensure_certificate(config.tls.certificate, config.tls.private_key)
        private_directory(config.spool_directory)
        key = prepare_store(config)
    except (ConfigError, StoreUnavailable, ValueError, LookupError, OSError) as e:
        print(f"devsetup: {e}", file=sys.stderr)
        return 1
    if key is None:
        say(f"no demo credential: the database has organizations but no "
            f"{DEMO_ORG}/{DEMO_SERVER} credential named {DEMO_CREDENTIAL!r}; "
            f"add one with `mailgw --config {path} credential add ORG/SERVER --type smtp`")
        return 0
    host, port = submission_address(config)
    print(instructions(key, host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
