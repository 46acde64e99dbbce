"""DRBD, as seen and driven by iscsi-ha: what every resource looks like, and role changes.

Two DRBD generations are in the field and they speak differently:

* **8.4** (XenServer / XCP-ng 8.x dom0): ``/proc/drbd`` lists every configured minor with its
  connection state, roles, disk states, the out-of-sync amount and, during a resync, a progress
  line. One read of that file describes every resource at once; the only thing it lacks is the
  resource *name*, which ``drbdadm sh-minor <res>`` gives from the configuration (no kernel call,
  so it is asked once per resource and remembered). ``drbdadm role|cstate|dstate`` are only run
  for a resource that ``/proc/drbd`` does not show, to confirm it is ``Unconfigured``.
* **9**: ``/proc/drbd`` holds only the version; ``drbdsetup status --json`` describes every
  resource, with the peer's role, disk and replication state under ``connections[]``. One command
  per cycle.

So ``observe()`` costs one command per cycle in the steady state on either version (plus one
kernel-log read while some resource is StandAlone), whatever the number of resources.

States are kept in DRBD's own words. DRBD 9 splits 8.4's connection state into a connection state
and a per-volume replication state; we report the connection state, except that a ``Connected``
connection whose replication is not ``Established`` reports the replication state
(``SyncSource``, ``SyncTarget``, ...). That way ``Connected`` means "connected and in sync" on
both generations, as it always did on 8.4.

Split brain is not a state DRBD reports: both sides just end ``StandAlone`` and every command
returns 0. Only the kernel log says "Split-Brain detected but unresolved". A StandAlone resource
whose log does not say so (or whose log shows a successful reconnection since) is an operator's
``disconnect``, not a split brain.

The parsers are pure module-level functions, tested on real captured outputs. Each returns a typed
value or raises ``DrbdParseError``, whose message quotes the text it could not read; ``observe()``
turns that into ``DrbdResource.error`` and never raises. Unknown fields and unknown state words are
carried through, not rejected: a newer DRBD may invent some.

The package, one module per source of facts (the parsers are pure, the adapter is the only part
that runs anything):

* ``common``: the parse error, DRBD's state words, the order of disk states;
* ``drbdadm``: ``drbdadm role | cstate | dstate | sh-minor`` (both generations);
* ``v84``: 8.4's ``/proc/drbd`` and ``drbdadm get-gi``;
* ``v9``: 9's ``drbdsetup status --json``;
* ``kernel_log``: split brain, from the kernel log;
* ``refusals``: DRBD's safety refusals and its own words;
* ``events``: DRBD's state-change stream (``drbdsetup events`` / ``events2``), which wakes the loop;
* ``adapter``: ``Drbd``, which observes and acts through one injected runner.

Everything callers use is importable from ``controller.systems.drbd`` itself.
"""

from .adapter import Drbd
from .common import KIB, MIB, DrbdParseError, LocalPeer, cannot_read
from .drbdadm import is_unknown_resource, parse_cstate, parse_dstate, parse_role, parse_sh_minor
from .kernel_log import SPLIT_BRAIN_UNRESOLVED, SplitBrainKey, find_split_brain
from .refusals import REFUSALS, drbd_words, parse_refusal
from .v9 import (
    Drbd9Connection,
    Drbd9Device,
    Drbd9PeerDevice,
    Drbd9Resource,
    parse_status_json,
    resource_from_status,
)
from .v84 import (
    GenerationIds,
    ProcMinor,
    Resync,
    parse_get_gi,
    parse_proc_drbd,
    parse_proc_version,
    resource_from_proc,
)

__all__ = [
    "KIB",
    "MIB",
    "REFUSALS",
    "SPLIT_BRAIN_UNRESOLVED",
    "Drbd",
    "Drbd9Connection",
    "Drbd9Device",
    "Drbd9PeerDevice",
    "Drbd9Resource",
    "DrbdParseError",
    "GenerationIds",
    "LocalPeer",
    "ProcMinor",
    "Resync",
    "SplitBrainKey",
    "cannot_read",
    "drbd_words",
    "find_split_brain",
    "is_unknown_resource",
    "parse_cstate",
    "parse_dstate",
    "parse_get_gi",
    "parse_proc_drbd",
    "parse_proc_version",
    "parse_refusal",
    "parse_role",
    "parse_sh_minor",
    "parse_status_json",
    "resource_from_proc",
    "resource_from_status",
]
