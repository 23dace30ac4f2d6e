"""Listening sockets as services that bind before twistd drops privileges.

twistd calls C{privilegedStartService} on the application's services while
still root, then switches user, then calls C{startService}: every listener is
a child of the gateway's C{MultiService} from construction and binds in
C{privilegedStartService}, so ports below 1024 work with C{twistd -u}. A port
that cannot be bound is a L{StartupError}, which twistd reports as one line
and a non-zero exit (see C{docs/deployment.md}).
"""
from __future__ import annotations

from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class StartupError(SystemExit):
    """The gateway cannot start: one line for the operator, exit status 1.

    A C{SystemExit} so that twistd, which lets it through, prints the line
    and exits non-zero instead of logging a traceback.
    """

    def __init__(self, message: str):
        super().__init__(f"mailgw: {message}")


def parse_endpoint(reactor, description: str, where: str):
    """The server endpoint for C{description}.

    @param where: the setting that holds it, for the error (C{listeners[0].endpoint}).
    @raise StartupError: it does not parse (a typo such as C{interfce=}).
    """
    try:
        return endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise StartupError(f"{where}: cannot use {description!r}: {e}") from None


class ListenerService(service.Service):
    """One listening port for C{factory}.

    @ivar port: the C{IListeningPort} once bound, else C{None}.
    """

    def __init__(self, endpoint, factory, description: str, where: str, logged: str):
        """
        @param description: the endpoint string (for log lines).
        @param where: the setting it comes from (for errors).
        @param logged: the log line once bound, a format with C{{endpoint}},
            C{{host}} and C{{port}} fields.
        """
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.where = where
        self.logged = logged
        self.port = None

    def privilegedStartService(self):
        super().privilegedStartService()
        self._bind()

    def startService(self):
        super().startService()
        if self.port is None:  # started without the privileged step (tests)
            self._bind()

    def _bind(self):
        outcome = []
        self.endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:
            raise StartupError(f"{self.where}: {self.description!r} did not bind at once")
        if isinstance(outcome[0], Failure):
            raise StartupError(f"{self.where}: cannot listen on {self.description!r}: "
                               f"{outcome[0].getErrorMessage()}")
        self.port = outcome[0]
        address = self.port.getHost()
        # tests and operators read the bound port from this line
        log.info(self.logged, endpoint=self.description,
                 host=getattr(address, "host", address), port=getattr(address, "port", ""))

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None
