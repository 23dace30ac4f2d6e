"""The DATA stream decoder: finds the end of the message and undoes
dot-stuffing, chunk by chunk, without per-line Python work.

The end is exactly CRLF "." CRLF (the first CRLF may be the one that ended the
DATA command). LF.LF, LF.CRLF and CRLF.LF do not end a message: that is what
SMTP smuggling relies on. A line (CRLF-terminated) that starts with a dot loses
that dot (unless a bare LF follows it). Other line ends pass through as
they came: the submission core (L{mailgw.submission.IncomingMessage}) makes
every line end CRLF or refuses the message, for SMTP and HTTP alike.
"""
from __future__ import annotations


class BodyDecoder:
    """Feed raw bytes; get body bytes out, and the bytes after the end."""

    def __init__(self):
        self._line_start = True
        self._held = b""
        self.finished = False

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """Decode C{data}.

        @return: C{(body bytes, rest)} where C{rest} is C{None} while the end
            has not been seen, else the bytes that followed it.
        """
        data = self._held + data
        self._held = b""
        if b"." not in data:
            # No dot, so no line starts with one and the end is not here: all
            # but a line end that a dot in the next chunk may follow goes out.
            # (Base64 parts, most of a message's bytes, never hold a dot.)
            if data:
                self._line_start = False
            keep = len(data) - (2 if data.endswith(b"\r\n") else data.endswith(b"\r"))
            self._held = data[keep:]
            return data[:keep], None
        out = []
        i, n = 0, len(data)
        while True:
            if self._line_start:
                if i >= n:
                    break
                if data.startswith(b".", i):
                    if n - i < 3 and b".\r\n".startswith(data[i:]):
                        self._held = data[i:]  # wait for more
                        break
                    if data.startswith(b".\r\n", i):
                        self.finished = True
                        return b"".join(out), data[i + 3:]
                    if not data.startswith(b".\n", i):
                        # Undo dot-stuffing. A dot before a bare LF is kept:
                        # that "line" was never a stuffed SMTP line.
                        i += 1
                self._line_start = False
            j = data.find(b"\r\n.", i)
            if j < 0:
                keep = n
                if data.endswith(b"\r\n"):
                    keep -= 2
                elif data.endswith(b"\r"):
                    keep -= 1
                keep = max(keep, i)
                out.append(data[i:keep])
                self._held = data[keep:]
                break
            out.append(data[i:j + 2])
            i = j + 2
            self._line_start = True
        return b"".join(out), None
