"""Files at rest that only the gateway's own user may reach.

The SQLite database holds every credential key and every queued body, and its
C{-wal} file holds the latest of them until a checkpoint; the spool directory
holds bodies while DATA arrives. None of them is anyone else's business, so:

  - a file mailgw creates is created C{0600} and a directory C{0700}, whatever
    the process umask (the umask can only take bits away, and an unusual one
    could take the owner's: the mode is set exactly after creation);
  - one that already exists and lets its group or others in is tightened at
    start (group and others lose every permission, the owner's are kept),
    with one log line naming the file and both modes, so that an operator
    learns it was open.

SQLite creates the database's C{-wal}, C{-shm} and C{-journal} files itself,
with the permissions of the main database file (its Unix VFS reads the main
file's mode and sets it on a new companion, umask or not), so creating the
main file C{0600} before SQLite opens it is enough for those; ones left by an
earlier run are only tightened (L{tighten}).
"""
from __future__ import annotations

import os
import stat

from twisted.logger import Logger

_log = Logger()

#: a private file: read and write for the owner only
FILE_MODE = 0o600
#: a private directory: the owner only
DIRECTORY_MODE = 0o700
#: the permission bits of the group and of others
_OPEN_BITS = 0o077
_CREATE = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


def tighten(path: str, log: Logger = _log) -> bool:
    """Take every permission of the group and of others away from C{path}
    (a file or a directory) when it has any, with one log line saying from
    which mode to which. The owner's permissions are left as they are.

    @param path: the file or directory; a symbolic link is followed.
    @param log: where the line goes.
    @return: C{True} when the mode was changed, C{False} when it was private
        already or C{path} does not exist.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return False
    if not mode & _OPEN_BITS:
        return False
    private = mode & ~_OPEN_BITS
    os.chmod(path, private)
    log.warn("tightened the permissions of {path} from {old} to {new}: "
             "only mailgw's user may read what it holds",
             path=path, old=f"{mode:04o}", new=f"{private:04o}")
    return True


def private_file(path: str, log: Logger = _log) -> None:
    """Make sure C{path} exists and only its owner may reach it: create it
    empty with mode L{FILE_MODE} when it does not exist, else L{tighten} it.
    An existing file's content is never touched.

    @param path: the file; a symbolic link is followed.
    @param log: where a tightening is logged.
    @raise OSError: it could be neither created nor changed.
    """
    try:
        fd = os.open(path, _CREATE | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        if os.path.exists(path):
            tighten(path, log)
            return
        # a symbolic link to a file not there yet (O_EXCL refuses any link):
        # create the file it points to
        fd = os.open(path, _CREATE, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # exactly, whatever the umask took away
    finally:
        os.close(fd)


def private_directory(path: str, log: Logger = _log) -> None:
    """Make sure the directory C{path} exists and only its owner may reach it:
    create it with mode L{DIRECTORY_MODE} when it does not exist (its missing
    parents get the usual mode: they hold nothing of their own), else
    L{tighten} it.

    @param path: the directory; a symbolic link is followed.
    @param log: where a tightening is logged.
    @raise FileExistsError: C{path} exists and is not a directory.
    @raise OSError: it could be neither created nor changed.
    """
    parent = os.path.dirname(os.path.normpath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, DIRECTORY_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        tighten(path, log)
        return
    os.chmod(path, DIRECTORY_MODE)  # exactly, whatever the umask took away
