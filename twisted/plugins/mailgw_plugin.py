"""twistd plugin: ``twistd mailgw --config FILE`` runs the gateway.

Kept to one line of work: every ``twistd`` run imports this module, so it must
not import anything of ours (``mailgw.tap`` is loaded lazily by ServiceMaker).
"""
from twisted.application.service import ServiceMaker

mailgw = ServiceMaker(
    "mailgw",
    "mailgw.tap",
    "mailgw SMTP submission gateway",
    "mailgw",
)
