"""Persistent controller state: the manual-mode override, kept in the state directory.

File ``<state_dir>/manual-mode.json``, written atomically (temporary file, fsync, rename, fsync of
the directory) so a crash or a power cut leaves either the old or the new content, never half::

    {"format": 1, "enabled": true, "requested": "secondary", "since": 1764064800.0}

``requested`` is the role of the operator's last become-primary / become-secondary (null until
then). A missing file means automatic mode. A file that cannot be read or parsed means *manual mode
with no request* (keep the current roles): if an operator switched to manual mode for maintenance,
a damaged file must not let the controller start moving storage around on its own.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import stat
from typing import Callable, Optional, Tuple

from .files import STATE_LIMIT, kind_of, read_capped, remove_quietly, write_temp
from .model import ManualMode, StorageRole

log = logging.getLogger(__name__)

MANUAL_MODE_FILE = "manual-mode.json"
FORMAT = 1


def parse_manual_mode(text: str) -> ManualMode:
    """The mode in ``text``; ValueError saying what is wrong with anything but our own format."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    enabled = data.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ValueError('"enabled" is not true or false')
    requested = data.get("requested")
    if requested is not None and requested not in [r.value for r in StorageRole]:
        raise ValueError('"requested" is not "primary", "secondary" or null')
    since = data.get("since")
    if since is not None:
        if isinstance(since, bool) or not isinstance(since, (int, float)):
            raise ValueError('"since" is not a number')
        if isinstance(since, int) and since.bit_length() > 64:
            raise ValueError('"since" is not a time')
        if not math.isfinite(float(since)):
            raise ValueError('"since" is not a finite number')
    return ManualMode(
        enabled=enabled,
        requested=StorageRole(requested) if requested else None,
        since=float(since) if since is not None else None,
    )


def render_manual_mode(mode: ManualMode) -> str:
    return (
        json.dumps(
            {
                "format": FORMAT,
                "enabled": mode.enabled,
                "requested": mode.requested.value if mode.requested else None,
                "since": mode.since,
            },
            sort_keys=True,
        )
        + "\n"
    )


class ManualModeStore:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, MANUAL_MODE_FILE)

    def load(self) -> Tuple[ManualMode, Optional[str]]:
        """The persisted mode and, when the file is damaged, why it was not trusted.

        Never raises: whatever is at the path (bytes that are not UTF-8, a 400-digit number,
        deep nesting, a FIFO, a device, a directory) is a damaged file, i.e. manual mode, and
        ``iscsi-cfg manual-mode-enable`` / ``-disable`` replace it with a good one.
        """
        try:
            raw = read_capped(self.path, STATE_LIMIT)
        except FileNotFoundError:
            return ManualMode(), None
        except OSError as exc:
            problem = f"cannot read {self.path}: {exc.strerror or exc}; treating as manual mode"
            return ManualMode(enabled=True), problem
        try:
            return parse_manual_mode(raw.decode("utf-8")), None
        except Exception as exc:  # every way of being damaged, named, never a raise
            why = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)[:200]
            problem = f"{self.path} is damaged ({why}); treating as manual mode"
            return ManualMode(enabled=True), problem

    def save(self, mode: ManualMode) -> None:
        # A damaged file (a FIFO or a socket put there included) is replaced: that is the repair.
        atomic_write(self.path, render_manual_mode(mode), replaceable=_REPAIRABLE)


# What atomic_write may rename over. A regular file, always; whatever else is at the path was put
# there by someone else, and a device node in particular must never be turned into a file.
_REPAIRABLE = (stat.S_ISREG, stat.S_ISFIFO, stat.S_ISSOCK, stat.S_ISLNK)


class NotReplacing(OSError):
    """atomic_write refused to replace what is at the path (a device node, a directory)."""


def atomic_write(
    path: str,
    text: str,
    mode: int = 0o644,
    replaceable: Tuple[Callable[[int], bool], ...] = (stat.S_ISREG, stat.S_ISLNK),
) -> None:
    """Write ``text`` to ``path`` so that a crash leaves the old or the new content, never half.

    The rename replaces whatever is at ``path``, so anything there that is not of a
    ``replaceable`` kind (by default: a regular file or a symbolic link, which the rename
    replaces without touching its target) is refused with
    NotReplacing, before any temporary file is made.
    """
    try:
        st: Optional[os.stat_result] = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not any(test(st.st_mode) for test in replaceable):
        raise NotReplacing(
            errno.EEXIST,
            f"is {kind_of(st.st_mode)}; not replacing it with a "
            "file (point the setting at a file path, or remove it)",
            path,
        )
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = write_temp(directory, text, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
