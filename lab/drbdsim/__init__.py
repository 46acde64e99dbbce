"""The lab's DRBD 8.4 simulator: a stand-in ``drbdadm`` plus the files the kernel would provide.

``drbdadm.py`` is both the executable the lab puts on each node's PATH (stdlib only, run with the
controller's interpreter) and the module the harness and the tests import.
"""

from .drbdadm import (
    ENV_DIR,
    ENV_NODE,
    SB_UNRESOLVED,
    Cluster,
    SimError,
    main,
    open_holders,
    per_mil_done,
    render_proc_drbd,
    render_progress,
    thousands,
)

__all__ = [
    "ENV_DIR",
    "ENV_NODE",
    "SB_UNRESOLVED",
    "Cluster",
    "SimError",
    "main",
    "open_holders",
    "per_mil_done",
    "render_proc_drbd",
    "render_progress",
    "thousands",
]
