"""Split brain on one host: gather this host's side, run one DRBD step, keep the audit line.

Served twice, with the same code: to the local ``iscsi-cfg`` over the control socket (command
``split-brain``) and to the peer's controller over the peer channel (operation ``splitbrain``).
The local daemon relays what the CLI asks of the other host, so ``iscsi-cfg split-brain`` needs
nothing but the control socket, and both hosts' views come from the same function.

Requests (``action``):

* ``evidence``: this host's ``Side`` (``controller/splitbrain.py``) of a resource: DRBD's states,
  out-of-sync count and kernel-log verdict (the adapter's ``observe``), ``drbdadm get-gi``, the
  target's sessions and the VIP (the controller's own observation, nothing changed), the
  ledger's record of this host Primary without its peer;
* ``step``: one of DRBD's resolve commands (``splitbrain.ACTIONS``) for a resource here. Nothing
  else can be run through it, and every step is logged with who asked;
* ``snapshot``: a read-only LVM snapshot of this host's backing device, before it is discarded
  (``resolve --snapshot``; only the name's suffix and the size come from the request);
* ``audit``: log the final line and append it to ``<state_dir>/split-brain.log``.

The order of the steps and every check before them are the CLI's (``splitbrain_cli.py``), from
the pure ``splitbrain.plan`` and ``splitbrain.refusals``; this module only carries them out.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import replace
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .model import DrbdResource
from .splitbrain import ACTIONS, Side, side_to_dict
from .systems.drbd import drbd_words, parse_refusal

log = logging.getLogger("iscsi_ha.splitbrain")

AUDIT_FILE = "split-brain.log"
PEER_OP = "splitbrain"
# A step is one drbdadm call (milliseconds on a host, seconds under the lab's emulation);
# evidence waits for the controller's lock (at most one cycle). Bounded all the same.
PEER_CALL_TIMEOUT = 60.0


class SplitBrainRefused(Exception):
    def __init__(self, message: str, code: str = "refused") -> None:
        super().__init__(message)
        self.code = code


def side_from_observation(
    host: str,
    res: DrbdResource,
    gi_text: Optional[str],
    pool_role: Optional[str],
    manual: Optional[bool],
    vip_local: Optional[bool],
    target_present: Optional[bool],
    sessions: Optional[int],
    entry: Any,
    now: float,
) -> Side:
    """A Side from what the controller observed (pure; ``entry`` is the ledger's Entry)."""
    alone = {}
    if entry is not None:
        alone = {
            "alone_primary_since": entry.alone_primary_since,
            "alone_primary_last": entry.alone_primary_last,
            "alone_sessions": entry.alone_sessions,
            "last_in_sync": entry.connected.at if entry.connected is not None else None,
        }
    if res.error or not res.configured:
        return Side(
            host,
            res.name,
            error=res.error or f"{res.name} is not up on {host}",
            pool_role=pool_role,
            manual=manual,
            vip_local=vip_local,
            target_present=target_present,
            sessions=sessions,
            now=now,
            **alone,
        )
    return Side(
        host,
        res.name,
        role=res.role,
        peer_role=res.peer_role,
        connection=res.connection,
        disk=res.disk,
        peer_disk=res.peer_disk,
        split_brain=res.split_brain,
        out_of_sync_bytes=res.out_of_sync_bytes,
        sync_progress=res.sync_progress,
        sync_eta_seconds=res.sync_eta_seconds,
        gi=gi_text,
        pool_role=pool_role,
        manual=manual,
        vip_local=vip_local,
        target_present=target_present,
        sessions=sessions,
        now=now,
        **alone,
    )


def gather(controller: Any, resource: str, iqn: Optional[str] = None) -> Side:
    """This host's side of ``resource``, observed now (nothing is changed or recorded); with
    XenAPI enabled, the pool's VMs with disks on the target ``iqn``."""
    vms: Optional[tuple] = None
    vms_error: Optional[str] = None
    sr = getattr(controller.systems, "sr", None)
    if sr is not None and iqn:
        from .systems.vms import describe_all, read_vms

        found, vms_error = read_vms(sr.client, iqn)
        vms = describe_all(found) if found is not None else None
    with controller.lock:
        manual = controller.load_manual()
        obs = controller.observe(manual, record=False)
        res = obs.resource(resource)
        gi = controller.systems.drbd.generation_ids(resource)
        entry = controller.ledger.ledger.entries.get(resource)
    backing, volume, lvm_error = _backing(controller.systems.drbd, resource)
    side = side_from_observation(
        controller.hostname,
        res,
        gi.text if gi is not None else None,
        obs.pool.role.value,
        bool(manual.enabled),
        obs.vip.local if not obs.vip.error else None,
        obs.target.target_present if not obs.target.error else None,
        obs.target.sessions if not obs.target.error else None,
        entry,
        obs.now,
    )
    requested = manual.requested.value if manual.enabled and manual.requested else None
    return replace(
        side,
        vms=vms,
        vms_error=vms_error,
        backing=backing,
        manual_requested=requested,
        lvm_volume=volume.name if volume else None,
        lvm_free=volume.vg_free if volume else None,
        lvm_error=lvm_error,
    )


def _backing(drbd: Any, resource: str) -> Tuple[Optional[str], Any, Optional[str]]:
    """(backing device, its LVM volume or None, why not LVM) of a single-volume resource."""
    from .systems.drbd import DrbdParseError
    from .systems.drbd.backing import parse_sh_ll_dev
    from .systems.lvm import Lvm

    res = drbd.runner.run((drbd.drbdadm, "sh-ll-dev", resource), timeout=drbd.timeout)
    if not res.ok:
        return None, None, f"drbdadm sh-ll-dev: rc {res.rc}"
    try:
        devices = parse_sh_ll_dev(res.stdout, res.command)
    except DrbdParseError as exc:
        return None, None, str(exc)
    if len(devices) != 1:
        return ", ".join(devices), None, "several volumes: snapshot each by hand"
    volume, why = Lvm(drbd.runner, drbd.timeout).volume_of(devices[0])
    return devices[0], volume, why


SNAPSHOT_SUFFIX = re.compile(r"^[0-9]{8}T[0-9]{6}$")


def snapshot(drbd: Any, resource: str, stamp: Any, size: Any, who: str) -> Dict[str, Any]:
    """A read-only snapshot ``<lv>-splitbrain-<stamp>`` of this host's backing volume."""
    from .systems.lvm import Lvm

    if not isinstance(stamp, str) or not SNAPSHOT_SUFFIX.match(stamp):
        raise SplitBrainRefused(
            "snapshot: the name's suffix must be YYYYmmddTHHMMSS", "bad_request"
        )
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size < 1 << 50:
        raise SplitBrainRefused("snapshot: size must be a positive number of bytes", "bad_request")
    device, volume, why = _backing(drbd, resource)
    if volume is None:
        return {"ok": False, "said": why or "not on LVM"}
    name = f"{volume.lv}-splitbrain-{stamp}"
    log.warning(
        "split brain: snapshot of %s as %s/%s, %d bytes (asked by %s)",
        volume.name,
        volume.vg,
        name,
        size,
        who or "unknown",
    )
    ok, said = Lvm(drbd.runner, drbd.timeout).snapshot(volume, name, size)
    log.log(logging.WARNING if ok else logging.ERROR, "split brain: %s", said)
    return {
        "ok": ok,
        "said": said,
        "snapshot": f"{volume.vg}/{name}",
        "origin": volume.name,
        "size": size,
    }


def run_step(drbd: Any, resource: str, action: str, who: str) -> Dict[str, Any]:
    """``drbdadm ACTION RESOURCE`` here; DRBD's words come back either way."""
    if action not in ACTIONS:
        raise SplitBrainRefused(
            f"unknown step {str(action)[:40]!r}; known: {', '.join(ACTIONS)}", "bad_request"
        )
    verb, _, option = action.partition(" ")
    argv = [drbd.drbdadm, verb, *([option] if option else []), resource]
    log.warning("split brain: running `%s` (asked by %s)", " ".join(argv), who or "unknown")
    t0 = time.monotonic()
    res = drbd.runner.run(argv, timeout=drbd.timeout)
    took = time.monotonic() - t0
    text = res.stderr + "\n" + res.stdout
    words = drbd_words(text) if text.strip() else ""
    refusal = parse_refusal(text)
    log.log(
        logging.WARNING if res.ok else logging.ERROR,
        "split brain: `%s` rc %s%s",
        " ".join(argv),
        res.rc,
        f": {words}" if words else "",
    )
    return {
        "command": " ".join(argv),
        "rc": res.rc,
        "ok": res.ok,
        "said": words,
        "refusal": refusal[2] if refusal else None,
        "took": took,
    }


def audit(state_dir: str, line: str, who: str) -> Dict[str, Any]:
    """The resolve's audit line: logged (WARNING, to syslog with the rest) and appended."""
    line = str(line)[:2000]
    log.warning("AUDIT %s (recorded for %s)", line, who or "unknown")
    path = os.path.join(state_dir, AUDIT_FILE)
    record = json.dumps({"at": time.time(), "who": who, "line": line}) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, record.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.error("cannot append to %s: %s", path, exc)
        return {"logged": True, "file": None, "error": str(exc)}
    return {"logged": True, "file": path}


def handle(
    controller: Any,
    state_dir: str,
    resources: tuple,
    args: Mapping[str, Any],
    who: str,
    iqn: Optional[str] = None,
) -> Dict[str, Any]:
    """One request of either channel for this host (see the module docstring)."""
    action = args.get("action")
    name = args.get("resource")
    if action == "audit":
        return audit(state_dir, str(args.get("line") or ""), who)
    if name not in resources:
        raise SplitBrainRefused(
            f"{str(name)[:60]!r} is not a resource of "
            f"{controller.hostname} ({', '.join(resources)})",
            "unknown_resource",
        )
    if action == "evidence":
        return side_to_dict(gather(controller, str(name), iqn))
    if action == "step":
        return run_step(controller.systems.drbd, str(name), str(args.get("step")), who)
    if action == "snapshot":
        return snapshot(
            controller.systems.drbd, str(name), args.get("stamp"), args.get("size"), who
        )
    raise SplitBrainRefused(
        f"unknown action {str(action)[:40]!r} (evidence, step, snapshot, audit)", "bad_request"
    )


def peer_handler(
    controller: Any, state_dir: str, resources: tuple, iqn: Optional[str] = None
) -> Callable[[Mapping[str, Any]], Dict[str, Any]]:
    """The peer channel's ``splitbrain`` operation."""
    from .peer import Refused

    def op(args: Mapping[str, Any]) -> Dict[str, Any]:
        who = f"the peer's operator ({str(args.get('who') or 'unknown')[:80]})"
        try:
            return handle(controller, state_dir, resources, args, who, iqn)
        except SplitBrainRefused as exc:
            raise Refused(str(exc), exc.code) from None

    return op


def control(daemon: Any, request: Mapping[str, Any], who: str) -> Dict[str, Any]:
    """The control socket's ``split-brain`` command: ``host`` ``"peer"`` relays to the peer's
    controller over the peer channel; anything else runs here."""
    cfg = daemon.cfg
    controller = daemon.controller
    args = {k: request.get(k) for k in ("action", "resource", "step", "line", "stamp", "size")}
    args["who"] = who
    state_dir = cfg.paths.state_dir
    if request.get("host") == "peer":
        watcher = getattr(daemon, "peer_watcher", None)
        if watcher is None:
            return {
                "ok": False,
                "code": 1,
                "error": "no peer channel configured (peer.address "
                "in the YAML): the other host cannot be asked",
            }
        from .peer import PeerError

        try:
            result = watcher.client.call(PEER_OP, args, timeout=PEER_CALL_TIMEOUT)
        except PeerError as exc:
            return {"ok": False, "code": 1, "error": f"the peer: {exc}", "kind": exc.kind}
        return {"ok": True, "result": result}
    try:
        result = handle(controller, state_dir, tuple(cfg.resources), args, who, cfg.target.iqn)
    except SplitBrainRefused as exc:
        return {"ok": False, "code": 2 if exc.code == "bad_request" else 1, "error": str(exc)}
    return {"ok": True, "result": result}
