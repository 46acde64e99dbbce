"""Reading the files the controller is pointed at: regular files only, never more than a cap.

Every path in the configuration is typed by an administrator, and a mistake there must not freeze
or starve the controller: a FIFO blocks ``open()`` until somebody writes to it (a cycle that
never ends), ``/dev/zero`` or a huge log file read whole eats the memory of the host that holds
the storage. So every file the controller reads goes through ``read_capped``: the path must name
a regular file (checked before opening, so a device is never even opened, and again on the open
descriptor, so a swap in between does not help), opened non-blocking, and at most ``limit``
bytes are read. Anything else is an ``OSError`` whose ``strerror`` says what the path is, which
every caller already turns into its usual "cannot read FILE: ..." message.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile

# Caps by kind: real files are a few hundred bytes to a few KiB.
CONFIG_LIMIT = 1024 * 1024
STATE_LIMIT = 64 * 1024
SMALL_LIMIT = 64 * 1024


class NotARegularFile(OSError):
    """The path exists but is a FIFO, a device, a socket or a directory."""


class FileTooLarge(OSError):
    """The file is larger than the cap for its kind."""


def kind_of(mode: int) -> str:
    """``a FIFO``, ``a character device``, ... -- what a non-regular path is, in words."""
    for test, words in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return words
    return "not a regular file"


def _check(st: os.stat_result, path: str, limit: int) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if not stat.S_ISREG(st.st_mode):
        raise NotARegularFile(errno.EINVAL, f"is {kind_of(st.st_mode)}, not a regular file", path)
    if st.st_size > limit:
        raise FileTooLarge(
            errno.EFBIG,
            f"is {st.st_size} bytes, more than the {limit} bytes such a file can be",
            path,
        )


def read_capped(path: str, limit: int) -> bytes:
    """The content of the regular file ``path``; OSError when it is not one or is too large."""
    _check(os.stat(path), path, limit)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _check(os.fstat(fd), path, limit)
        chunks = []
        total = 0
        while total <= limit:  # a file that grows while we read stops at the cap too
            chunk = os.read(fd, min(65536, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise FileTooLarge(
                errno.EFBIG, f"grew beyond the {limit} bytes such a file can be", path
            )
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: str, limit: int) -> str:
    """``read_capped`` decoded as UTF-8; a byte that is not UTF-8 becomes U+FFFD, never raises."""
    return read_capped(path, limit).decode("utf-8", errors="replace")


def write_temp(directory: str, text: str, mode: int, prefix: str = ".tmp-") -> str:
    """A new file in ``directory`` holding ``text``, flushed to disk, with ``mode``: its path.

    The caller renames or links it into place (atomic) and removes it if that fails.
    """
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        remove_quietly(tmp)
        raise
    return tmp


def remove_quietly(path: str) -> None:
    """Remove a file if it is there; a temporary file's cleanup must not hide the real error."""
    try:
        os.unlink(path)
    except OSError:
        pass
