"""A failure that repeats every cycle, logged when it starts or changes and once more when it
ends: a read-only or full state directory, or a status file pointed at a device node, would
otherwise put the same error in the log each cycle for as long as it lasts."""

from __future__ import annotations

import logging
from typing import Optional


class SaidOnce:
    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.problem: Optional[str] = None  # what is failing now; None while it works

    def failed(self, exc: OSError, what: str, note: str = "") -> None:
        # errno's text, not str(exc): on a read-only directory that names a new temp file
        problem = f"cannot write {what}: {exc.strerror or exc}"
        if problem != self.problem:
            self.log.error("%s%s", problem, note)
        self.problem = problem

    def worked(self, again: str) -> None:
        if self.problem is not None:
            self.log.info("%s", again)
            self.problem = None
