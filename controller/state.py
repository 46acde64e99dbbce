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

import json
import logging
import os
import tempfile
from typing import Optional, Tuple

from .model import ManualMode, StorageRole

log = logging.getLogger(__name__)

MANUAL_MODE_FILE = "manual-mode.json"
FORMAT = 1


def parse_manual_mode(text: str) -> ManualMode:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    requested = data.get("requested")
    since = data.get("since")
    return ManualMode(
        enabled=bool(data.get("enabled", False)),
        requested=StorageRole(requested) if requested else None,
        since=float(since) if since is not None else None,
    )


def render_manual_mode(mode: ManualMode) -> str:
    return json.dumps(
        {
            "format": FORMAT,
            "enabled": mode.enabled,
            "requested": mode.requested.value if mode.requested else None,
            "since": mode.since,
        },
        sort_keys=True,
    ) + "\n"


class ManualModeStore:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, MANUAL_MODE_FILE)

    def load(self) -> Tuple[ManualMode, Optional[str]]:
        """The persisted mode and, when the file is damaged, why it was not trusted."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            return ManualMode(), None
        except OSError as exc:
            problem = f"cannot read {self.path}: {exc.strerror}; treating as manual mode"
            return ManualMode(enabled=True), problem
        try:
            return parse_manual_mode(text), None
        except (ValueError, TypeError) as exc:
            problem = f"{self.path} is damaged ({exc}); treating as manual mode"
            return ManualMode(enabled=True), problem

    def save(self, mode: ManualMode) -> None:
        atomic_write(self.path, render_manual_mode(mode))


def atomic_write(path: str, text: str, mode: int = 0o644) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
