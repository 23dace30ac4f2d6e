"""mailgw: an SMTP submission gateway for many tenants, on Twisted."""

__version__ = "0.1.0"
