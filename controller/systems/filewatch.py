"""Wake the controller the moment a file's content changes (pool.conf), through Linux inotify.

xapi rewrites ``/etc/xensource/pool.conf`` when the pool master changes; the storage has to
follow at once, not at the next poll. The dom0 has glibc 2.17 and no extra packages, so inotify
is reached through ``ctypes`` on libc (``inotify_init1``/``inotify_add_watch``, both in glibc
since 2.9). The **directory** is watched, not the file: xapi may replace the file (a rename onto
it) or rewrite it in place, and a watch on the file itself would die with the replaced inode.

What wakes the owner is a *content* change: every event that names the file (or says the watch
was lost or the queue overflowed) makes the watcher read the file and compare it with what it
read last; equal content (a touch, a rewrite with the same text) wakes nobody.

The file is also read every ``poll_period`` seconds while inotify is armed: inotify reports only
changes made through this kernel, so a file on a network or 9p file system (the VM lab shares its
pool.conf from the host that way) changes silently. Where inotify cannot be used at all (no libc
symbol, the directory missing, a watch limit reached) that poll is all there is; it says so once
in the log and tries inotify again each time round. Stopping is immediate: a pipe wakes the
waiting thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import threading
from typing import Callable, Iterator, List, Optional, Tuple

from .. import files

log = logging.getLogger(__name__)

# <sys/inotify.h>; the values are part of the kernel ABI.
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# Not IN_MODIFY or IN_CREATE: a file rewritten in place is truncated (or created empty) first,
# and reading then would see an empty pool.conf (unknown: hold). The writer's close says the
# content is complete; a rename onto the file (the atomic way) is IN_MOVED_TO.
DIR_MASK = (
    IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
# The watch itself is gone (directory deleted or moved) or events were lost: look and re-arm.
LOST = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_Q_OVERFLOW
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; the name follows, NUL-padded


def parse_events(buf: bytes) -> Iterator[Tuple[int, int, str]]:
    """``(wd, mask, name)`` for each ``struct inotify_event`` in what one read() returned."""
    offset = 0
    while offset + _HEADER.size <= len(buf):
        wd, mask, _cookie, length = _HEADER.unpack_from(buf, offset)
        offset += _HEADER.size
        raw = buf[offset : offset + length]
        offset += length
        yield wd, mask, raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class Inotify:
    """One inotify instance with one directory watch (the libc calls, nothing else)."""

    _libc: Optional[ctypes.CDLL] = None

    @classmethod
    def libc(cls) -> ctypes.CDLL:
        if cls._libc is None:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.inotify_init1.argtypes = [ctypes.c_int]
            lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            cls._libc = lib
        return cls._libc

    def __init__(self, directory: str) -> None:
        lib = self.libc()
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        wd = lib.inotify_add_watch(fd, os.fsencode(directory), DIR_MASK)
        if wd < 0:
            err = ctypes.get_errno()
            os.close(fd)
            hint = " (raise fs.inotify.max_user_watches)" if err == errno.ENOSPC else ""
            raise OSError(err, f"inotify_add_watch {directory}: {os.strerror(err)}{hint}")
        self.fd, self.wd = fd, wd

    def read(self) -> List[Tuple[int, int, str]]:
        try:
            return list(parse_events(os.read(self.fd, 65536)))
        except BlockingIOError:
            return []

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def read_text(path: str) -> Optional[str]:
    try:
        return files.read_text(path, files.SMALL_LIMIT)  # regular files only, capped (#16)
    except OSError:
        return None


class FileWatch:
    """Calls ``on_change()`` (in its own thread) whenever the content of ``path`` changes.

    ``mode`` says how it is watching right now: ``"inotify"``, ``"poll"`` or ``"stopped"``.
    """

    def __init__(
        self,
        path: str,
        on_change: Callable[[], None],
        poll_period: float = 0.5,
        use_inotify: bool = True,
    ) -> None:
        self.path = os.path.abspath(path)
        self.directory, self.name = os.path.split(self.path)
        self.on_change = on_change
        self.poll_period = poll_period
        self.use_inotify = use_inotify
        self.mode = "stopped"
        self.last: Optional[str] = read_text(self.path)
        self._stop_r, self._stop_w = os.pipe()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._fallback_logged = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="watch-" + self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.mode = "stopped"

    # -- the thread

    def _check(self) -> None:
        text = read_text(self.path)
        if text != self.last:
            self.last = text
            try:
                self.on_change()
            except Exception:  # the owner's bug must not end the watch
                log.exception("handling a change of %s failed", self.path)

    def _wait(self, fds: List[int], timeout: Optional[float]) -> List[int]:
        ready, _, _ = select.select(fds + [self._stop_r], [], [], timeout)
        return ready

    def _loop(self) -> None:
        while not self._stopping:
            watch = self._arm()
            if watch is None:
                self.mode = "poll"
                self._wait([], self.poll_period)
                self._check()
                continue
            self.mode = "inotify"
            self._fallback_logged = False
            self._check()  # anything that changed while no watch was armed
            try:
                self._follow(watch)
            finally:
                watch.close()

    def _arm(self) -> Optional[Inotify]:
        if not self.use_inotify:
            return None
        try:
            return Inotify(self.directory)
        except (OSError, AttributeError) as exc:  # AttributeError: a libc without inotify
            if not self._fallback_logged:
                log.warning(
                    "cannot watch %s through inotify (%s): reading it every %gs instead",
                    self.path,
                    exc,
                    self.poll_period,
                )
                self._fallback_logged = True
            return None

    def _follow(self, watch: Inotify) -> None:
        while not self._stopping:
            if watch.fd not in self._wait([watch.fd], self.poll_period):
                self._check()  # the backstop for changes inotify cannot see
                continue
            events = watch.read()
            if any(mask & LOST for _, mask, _ in events):
                self._check()
                return  # re-arm (the directory may have been replaced)
            if any(name == self.name for _, _, name in events):
                self._check()
