"""The control socket's commands: one name each, shared by the socket (``control.py``), the CLI
(``cli.py``) and the cycle (``cycle.Controller.command``).

A ``Command`` is a ``str``: it is sent as is in the JSON request (``{"cmd": "become-primary"}``),
compares equal to its name, and is the ``iscsi-cfg`` subcommand of the same name. To add one:
a member here (and in ``ROLE_COMMANDS`` when it changes a storage role: those run under the
controller's lock), its handler in ``control.ControlServer.dispatch``, its subcommand and help in
``cli.py``.
"""

from __future__ import annotations

import enum
from typing import Optional, Tuple


class Command(str, enum.Enum):
    # Read-only: answered from the published snapshot, never waiting for a cycle.
    STATUS = "status"
    GET = "get"
    LOG = "log"
    STALE_INFO = "stale-info"
    # Split-brain evidence, DRBD's resolve steps, the audit line (controller/splitbrain_ops.py):
    # root only, relayed to the peer's controller when asked ("host": "peer").
    SPLIT_BRAIN = "split-brain"
    # Role commands: run by the controller under its lock, then a cycle follows.
    MANUAL_MODE_ENABLE = "manual-mode-enable"
    MANUAL_MODE_DISABLE = "manual-mode-disable"
    BECOME_PRIMARY = "become-primary"
    BECOME_SECONDARY = "become-secondary"
    # Moves the storage to the other host with the peer's controller (switchover.py); takes
    # the lock step by step, not for the whole move.
    SWITCHOVER = "switchover"

    def __str__(self) -> str:  # the name on the wire and on the command line, on every Python
        return str(self.value)

    @classmethod
    def parse(cls, name: object) -> Optional["Command"]:
        """The command called ``name``; None for anything else."""
        try:
            return cls(name)
        except ValueError:
            return None


ROLE_COMMANDS: Tuple[Command, ...] = (
    Command.MANUAL_MODE_ENABLE,
    Command.MANUAL_MODE_DISABLE,
    Command.BECOME_PRIMARY,
    Command.BECOME_SECONDARY,
)
