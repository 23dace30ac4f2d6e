"""twistd's entry: ``twistd mailgw --config FILE`` (options only parse; the
wiring is L{mailgw.service.build_service})."""
from __future__ import annotations

import os

from twisted.python import usage

from mailgw.config import ConfigError, load_config

DEFAULT_CONFIG = "etc/mailgw.toml"

#: seconds a thread may keep the interpreter while another waits for it
#: (Python's default is 0.005). The store's writer thread waits for the
#: interpreter between its statements while the reactor's thread runs; at
#: 0.0005 s a commit is not held up for up to 5 ms each time, and under
#: make bench's load (a) the gateway takes about 8% more messages a second
#: (bench/RESULTS.md).
SWITCH_INTERVAL = 0.0005


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Run the mailgw SMTP submission gateway. The configuration file "
                "comes from --config, else $MAILGW_CONFIG, else " + DEFAULT_CONFIG + ".")
    optParameters = [
        ["config", "c", None, "path of the mailgw TOML configuration file"],
        ["log-format", None, "text", "log lines as 'text' or 'json' (one object a line)"],
    ]

    def postOptions(self):
        if self["log-format"] not in ("text", "json"):
            raise SystemExit("mailgw: --log-format must be text or json")
        parent = self.parent
        if self["log-format"] == "json" and parent is not None:
            from mailgw.logs import JSON_OBSERVER
            parent["logger"] = JSON_OBSERVER
        elif parent is not None and not parent.get("logger") and not parent.get("syslog"):
            # twistd's text lines where twistd would write them, written a
            # few at a time (mailgw.logs); --logger and --syslog still win
            from mailgw.logs import TEXT_OBSERVER, use_text_observer
            use_text_observer(parent.get("logfile"), bool(parent.get("nodaemon")))
            parent["logger"] = TEXT_OBSERVER
        path = self["config"] or os.environ.get("MAILGW_CONFIG") or DEFAULT_CONFIG
        try:
            self["config_value"] = load_config(path)
        except ConfigError as e:
            # One line naming the problem; twistd's usage text would bury it.
            raise SystemExit(f"mailgw: {e}") from None


def makeService(options):
    import sys

    from twisted.internet import reactor

    from mailgw.descriptors import check_descriptors
    from mailgw.service import build_service
    from mailgw.tls import TLSConfigError
    # Before any listener or store opens a descriptor (mailgw.descriptors).
    check_descriptors(options["config_value"])
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        return build_service(options["config_value"], reactor)
    except (TLSConfigError, ConfigError) as e:
        raise SystemExit(f"mailgw: {e}") from None
