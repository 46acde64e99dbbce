"""The LIO backend of the target layer (``target.py``): the Linux kernel target, through configfs.

Direct configfs reads and writes, not rtslib-fb and never targetcli: configfs *is* LIO's
interface (rtslib-fb is a Python wrapper over the same files), so going direct needs no extra
package in the dom0 RPM's bundled interpreter, no udev/dbus/kmod Python bindings, and no code of
ours that can hang in a library (targetcli hangs in known cases). The files written are few:

    target/core/iblock_<HBA>/iscsi_ha_lun<N>/      block backstore on the DRBD device
        control                 "udev_path=/dev/drbd0" (then enable = 1)
        wwn/vpd_unit_serial     the pinned serial (VPD 0x80; LIO derives its NAA from it)
        wwn/vendor_id, wwn/product_id
        attrib/emulate_write_cache = 0
    target/iscsi/<IQN>/tpgt_1/
        lun/lun_<N>/<link> ->   the backstore
        np/0.0.0.0:3260         the portal (all addresses: the VIP comes and goes)
        attrib/generate_node_acls = 1, demo_mode_write_protect = 0, authentication = 0
        param/DefaultTime2Wait
        enable = 1

Ours are exactly the HBA directory ``iblock_<HBA>`` (a number no tool picks by itself) and the
target named by our IQN; every other backstore, target and fabric is read past, never touched.
Observation reads that part of the tree into a snapshot (``read_tree``) and everything else is
pure: ``parse_tree`` makes an ``LioState`` of it, ``plan_serve`` / ``plan_remove`` list the
configfs operations that make the state match the configuration (tested on trees captured from
a real LIO in the VM lab: ``tests/fixtures/lio/``), and ``apply`` performs them.

Write safety: an iblock backstore submits bios straight to the DRBD device (no page cache), so a
WRITE completes when DRBD (protocol C) has it on both disks. ``emulate_write_cache = 0`` makes the
target tell initiators so (WCE off in the caching mode page) instead of inviting them to rely on
SYNCHRONIZE CACHE; the controller sets it back to 0 whenever it finds it on.

Sessions are counted by ``fabric_statistics/iscsi_instance/sessions`` (a number the kernel keeps),
never by the initiator names in ``dynamic_sessions`` (the client's text).
"""

from __future__ import annotations

import errno
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..model import LunInfo, StepResult, TargetObservation
from .runner import Runner
from .target import DEFAULT_TIME2WAIT, LIO_MODULES, LunSpec, lio_wwn, lun_specs, planned_info

log = logging.getLogger(__name__)

HBA = "iblock_48211"  # our backstores' HBA: targetcli numbers its own from iblock_0
TPG = "tpgt_1"
PORTAL = "0.0.0.0:3260"
LINK = "iscsi_ha"  # name of the LUN's symlink to its backstore
SKIP_DIRS = ("statistics", "alua", "pr", "fabric_statistics", "acls", "auth")
SESSIONS = "fabric_statistics/iscsi_instance/sessions"
READ_LIMIT = 65536


def device_name(number: int) -> str:
    return f"iscsi_ha_lun{number}"


# -- the snapshot ------------------------------------------------------------------------------


@dataclass
class Tree:
    """A part of configfs as read: files (path -> text), directories, symlinks (path -> target).
    Paths are relative to the configfs mount point."""

    files: Dict[str, str] = field(default_factory=dict)
    dirs: List[str] = field(default_factory=list)
    links: Dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"files": self.files, "dirs": sorted(self.dirs), "links": self.links},
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> "Tree":
        data = json.loads(text)
        return cls(
            dict(data.get("files", {})), list(data.get("dirs", [])), dict(data.get("links", {}))
        )


def read_tree(root: str, iqn: str) -> Tree:
    """Our part of configfs (our HBA, our target) plus the names of everything else."""
    tree = Tree()
    base = os.path.join(root, "target")
    for top in ("target", "target/core", "target/iscsi"):
        path = os.path.join(root, top)
        if os.path.isdir(path):
            if top not in tree.dirs:
                tree.dirs.append(top)
            for name in _listdir(path):
                rel = f"{top}/{name}"
                full = os.path.join(root, rel)
                if os.path.isdir(full) and not os.path.islink(full) and rel not in tree.dirs:
                    tree.dirs.append(rel)
    _walk(root, f"target/core/{HBA}", tree)
    _walk(root, f"target/iscsi/{iqn}", tree)
    sessions = os.path.join(base, "iscsi", iqn, SESSIONS)
    text = _read(sessions)
    if text is not None:
        tree.files[f"target/iscsi/{iqn}/{SESSIONS}"] = text
    return tree


def _listdir(path: str) -> List[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return f.read(READ_LIMIT).decode(errors="replace")
    except OSError:
        return None  # write-only attributes (control), or gone meanwhile


def _walk(root: str, rel: str, tree: Tree, depth: int = 0) -> None:
    path = os.path.join(root, rel)
    if depth > 8 or not os.path.isdir(path):
        return
    if rel not in tree.dirs:
        tree.dirs.append(rel)
    for name in _listdir(path):
        sub = f"{rel}/{name}"
        full = os.path.join(root, sub)
        if os.path.islink(full):
            try:
                tree.links[sub] = os.readlink(full)
            except OSError:
                pass
        elif os.path.isdir(full):
            if name not in SKIP_DIRS:
                _walk(root, sub, tree, depth + 1)
        else:
            text = _read(full)
            if text is not None:
                tree.files[sub] = text


# -- parsing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LioDevice:
    name: str
    udev_path: str = ""
    enabled: bool = False
    serial: str = ""
    vendor: str = ""
    product: str = ""
    write_cache: Optional[bool] = None  # attrib/emulate_write_cache


@dataclass(frozen=True)
class LioState:
    loaded: bool = False  # target/ exists: target_core_mod is loaded, configfs mounted
    iscsi: bool = False  # target/iscsi exists: iscsi_target_mod is loaded
    hba: bool = False  # our HBA directory exists
    devices: Tuple[LioDevice, ...] = ()  # in our HBA
    target: bool = False  # our IQN exists
    tpg: bool = False
    tpg_enabled: bool = False
    portals: Tuple[str, ...] = ()
    luns: Tuple[Tuple[int, str], ...] = ()  # (lun number, backstore name it links to)
    demo_mode: bool = False  # generate_node_acls=1, authentication=0, write protect off
    time2wait: Optional[int] = None
    sessions: int = 0
    others: Tuple[str, ...] = ()  # other targets and HBAs: never touched

    def device(self, name: str) -> Optional[LioDevice]:
        for dev in self.devices:
            if dev.name == name:
                return dev
        return None


def _value(tree: Tree, path: str) -> str:
    return tree.files.get(path, "").strip()


def _flag(tree: Tree, path: str) -> Optional[bool]:
    text = _value(tree, path)
    return None if text not in ("0", "1") else text == "1"


def _int(tree: Tree, path: str) -> Optional[int]:
    text = _value(tree, path)
    return int(text) if text.isdigit() and len(text) < 12 else None


def _serial(text: str) -> str:
    # "T10 VPD Unit Serial Number: 6d71...\n"
    return text.partition(":")[2].strip() if ":" in text else text.strip()


def parse_tree(tree: Tree, iqn: str) -> LioState:
    """What LIO holds of ours. Never raises: what is unreadable reads as absent."""
    dirs = set(tree.dirs)
    hba = f"target/core/{HBA}"
    devices = []
    for d in sorted(dirs):
        head, _, name = d.rpartition("/")
        if head != hba:
            continue
        devices.append(
            LioDevice(
                name=name,
                udev_path=_value(tree, f"{d}/udev_path")
                or _info_udev_path(tree.files.get(f"{d}/info", "")),
                enabled=_value(tree, f"{d}/enable") == "1",
                serial=_serial(tree.files.get(f"{d}/wwn/vpd_unit_serial", "")),
                vendor=_value(tree, f"{d}/wwn/vendor_id"),
                product=_value(tree, f"{d}/wwn/product_id"),
                write_cache=_flag(tree, f"{d}/attrib/emulate_write_cache"),
            )
        )
    tdir = f"target/iscsi/{iqn}"
    tpg = f"{tdir}/{TPG}"
    luns = []
    for d in sorted(dirs):
        head, _, name = d.rpartition("/")
        if head != f"{tpg}/lun" or not name.startswith("lun_") or not name[4:].isdigit():
            continue
        backstore = ""
        for link, target in tree.links.items():
            if link.rpartition("/")[0] == d:
                backstore = target.rstrip("/").rpartition("/")[2]
        luns.append((int(name[4:]), backstore))
    portals = tuple(
        sorted(d.rpartition("/")[2] for d in dirs if d.rpartition("/")[0] == f"{tpg}/np")
    )
    others = tuple(
        sorted(
            d
            for d in dirs
            if d.count("/") == 2
            and d.startswith(("target/core/", "target/iscsi/"))
            and d not in (hba, tdir)
            and not d.endswith("/alua")
            and not d.endswith("/discovery_auth")
            and not d.endswith("/lio_version")
            and not d.endswith("/write_protect")
        )
    )
    return LioState(
        loaded="target" in dirs,
        iscsi="target/iscsi" in dirs,
        hba=hba in dirs,
        devices=tuple(devices),
        target=tdir in dirs,
        tpg=tpg in dirs,
        tpg_enabled=_value(tree, f"{tpg}/enable") == "1",
        portals=portals,
        luns=tuple(sorted(luns)),
        demo_mode=(
            _value(tree, f"{tpg}/attrib/generate_node_acls") == "1"
            and _value(tree, f"{tpg}/attrib/authentication") == "0"
            and _value(tree, f"{tpg}/attrib/demo_mode_write_protect") == "0"
        ),
        time2wait=_int(tree, f"{tpg}/param/DefaultTime2Wait"),
        sessions=_int(tree, f"{tdir}/{SESSIONS}") or 0,
        others=others,
    )


def _info_udev_path(info: str) -> str:
    # "... iBlock device: vda  UDEV PATH: /dev/vda  readonly: 0" (udev_path itself reads empty
    # unless the udev_path attribute was written; we write both)
    _, sep, rest = info.partition("UDEV PATH: ")
    return rest.split()[0] if sep and rest.split() else ""


# -- planning ----------------------------------------------------------------------------------

Op = Tuple[str, ...]  # ("mkdir", path) ("rmdir", path) ("write", path, text) ("symlink", to, at)
# ("unlink", path): paths relative to the configfs mount point


@dataclass(frozen=True)
class Desired:
    iqn: str
    luns: Tuple[LunSpec, ...]
    time2wait: int = DEFAULT_TIME2WAIT


def missing(state: LioState, want: Desired) -> List[str]:
    """What keeps ``state`` from serving ``want`` (empty: it serves)."""
    out = []
    if not state.target or not state.tpg:
        return [f"target {want.iqn} absent"]
    linked = dict(state.luns)
    for spec in want.luns:
        dev = state.device(device_name(spec.number))
        if dev is None or not dev.enabled:
            out.append(f"backstore of LUN {spec.number} absent")
        elif dev.udev_path != spec.path:
            out.append(f"LUN {spec.number} backed by {dev.udev_path}, not {spec.path}")
        elif dev.serial != spec.serial:
            out.append(f"LUN {spec.number} serial {dev.serial!r}, not {spec.serial!r}")
        elif dev.write_cache:
            out.append(f"LUN {spec.number} write cache on")
        elif linked.get(spec.number) != device_name(spec.number):
            out.append(f"LUN {spec.number} not exported")
    if PORTAL not in state.portals:
        out.append(f"portal {PORTAL} absent")
    if not state.demo_mode:
        out.append("initiator policy ALL not in place")
    if state.time2wait != want.time2wait:
        out.append(f"DefaultTime2Wait {state.time2wait}, not {want.time2wait}")
    if not state.tpg_enabled:
        out.append(f"{TPG} not enabled")
    return out


def plan_remove(state: LioState, iqn: str) -> List[Op]:
    """Our target, then our backstores, in the order configfs allows (children first)."""
    ops: List[Op] = []
    tdir = f"target/iscsi/{iqn}"
    tpg = f"{tdir}/{TPG}"
    if state.tpg:
        if state.tpg_enabled:
            ops.append(("write", f"{tpg}/enable", "0"))
        for number, backstore in state.luns:
            lun = f"{tpg}/lun/lun_{number}"
            if backstore:
                ops.append(("unlink", f"{lun}/{LINK}"))
            ops.append(("rmdir", lun))
        for portal in state.portals:
            ops.append(("rmdir", f"{tpg}/np/{portal}"))
        ops.append(("rmdir", tpg))
    if state.target:
        ops.append(("rmdir", tdir))
    for dev in state.devices:
        ops.append(("rmdir", f"target/core/{HBA}/{dev.name}"))
    if state.hba:
        ops.append(("rmdir", f"target/core/{HBA}"))
    return ops


def plan_serve(state: LioState, want: Desired) -> List[Op]:
    """The configfs operations that make ``state`` serve ``want``: only what is missing, so a
    target left by a crashed controller is adopted as it stands, and completed or rebuilt."""
    ops: List[Op] = []
    tdir = f"target/iscsi/{want.iqn}"
    tpg = f"{tdir}/{TPG}"
    linked = dict(state.luns)
    wanted = {device_name(s.number) for s in want.luns}
    # Backstores: a wrong device (other path), or a wrong serial (LIO refuses to change it while
    # exported), is unexported and rebuilt; the serial is set before the LUN is exported.
    rebuild = set()
    for spec in want.luns:
        have = state.device(device_name(spec.number))
        if have is not None and (
            have.udev_path != spec.path or have.serial != spec.serial or not have.enabled
        ):
            rebuild.add(spec.number)
    for number, backstore in state.luns:
        stray = backstore not in wanted or number not in {s.number for s in want.luns}
        if number in rebuild or stray or (backstore and backstore != device_name(number)):
            lun = f"{tpg}/lun/lun_{number}"
            if backstore:
                ops.append(("unlink", f"{lun}/{LINK}"))
            ops.append(("rmdir", lun))
            linked.pop(number, None)
    for device in state.devices:
        if device.name not in wanted or _number(device.name) in rebuild:
            ops.append(("rmdir", f"target/core/{HBA}/{device.name}"))
    hba = f"target/core/{HBA}"
    if not state.hba:
        ops.append(("mkdir", hba))
    for spec in want.luns:
        name = device_name(spec.number)
        dev = f"{hba}/{name}"
        current = state.device(name)
        if current is None or spec.number in rebuild:
            ops += [
                ("mkdir", dev),
                ("write", f"{dev}/control", f"udev_path={spec.path}"),
                ("write", f"{dev}/udev_path", spec.path),
                ("write", f"{dev}/wwn/vpd_unit_serial", spec.serial),
                ("write", f"{dev}/enable", "1"),
                ("write", f"{dev}/attrib/emulate_write_cache", "0"),
                ("write?", f"{dev}/wwn/vendor_id", spec.vendor),
                ("write?", f"{dev}/wwn/product_id", spec.product),
            ]
        else:
            if current.write_cache is not False:
                ops.append(("write", f"{dev}/attrib/emulate_write_cache", "0"))
            if current.vendor and current.vendor != spec.vendor:
                ops.append(("write?", f"{dev}/wwn/vendor_id", spec.vendor))
            if current.product and current.product != spec.product:
                ops.append(("write?", f"{dev}/wwn/product_id", spec.product))
    if not state.target:
        ops.append(("mkdir", tdir))
    if not state.tpg:
        ops.append(("mkdir", tpg))
    for spec in want.luns:
        if linked.get(spec.number) != device_name(spec.number):
            lun = f"{tpg}/lun/lun_{spec.number}"
            ops += [
                ("mkdir", lun),
                ("symlink", f"{hba}/{device_name(spec.number)}", f"{lun}/{LINK}"),
            ]
    if PORTAL not in state.portals or not state.tpg:
        ops.append(("mkdir", f"{tpg}/np/{PORTAL}"))
    if not state.demo_mode or not state.tpg:
        ops += [
            ("write", f"{tpg}/attrib/authentication", "0"),
            ("write", f"{tpg}/attrib/demo_mode_write_protect", "0"),
            ("write", f"{tpg}/attrib/generate_node_acls", "1"),
            ("write", f"{tpg}/attrib/cache_dynamic_acls", "1"),
        ]
    if state.time2wait != want.time2wait or not state.tpg:
        ops.append(("write", f"{tpg}/param/DefaultTime2Wait", str(want.time2wait)))
    if not state.tpg_enabled or not state.tpg:
        ops.append(("write", f"{tpg}/enable", "1"))
    return ops


def _number(name: str) -> Optional[int]:
    tail = name[len("iscsi_ha_lun") :]
    return int(tail) if name.startswith("iscsi_ha_lun") and tail.isdigit() else None


def apply(root: str, ops: Sequence[Op]) -> Tuple[bool, List[str], str]:
    """Perform ``ops`` under the configfs mount ``root``: (ok, done, failure). Stops at the
    first failure (configfs says why in errno). ``write?``: an attribute an older kernel lacks
    (vendor_id/product_id before Linux 4.x/5.x) is skipped, not an error."""
    done: List[str] = []
    for op in ops:
        kind, path = op[0], os.path.join(root, op[1]) if op[0] != "symlink" else ""
        try:
            if kind == "mkdir":
                try:
                    os.mkdir(path)
                except FileExistsError:
                    pass  # configfs made it with its parent (np, lun dirs are not)
            elif kind == "rmdir":
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    pass
            elif kind in ("write", "write?"):
                if kind == "write?" and not os.path.exists(path):
                    continue
                with open(path, "w") as f:
                    f.write(op[2])
            elif kind == "symlink":
                os.symlink(os.path.join(root, op[1]), os.path.join(root, op[2]))
            elif kind == "unlink":
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        except OSError as exc:
            where = op[2] if kind == "symlink" else op[1]
            value = f" {op[2]!r}" if kind.startswith("write") else ""
            why = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc.errno))
            return False, done, f"{kind} {where}{value}: {why}"
        done.append(f"{kind} {op[1] if kind != 'symlink' else op[2]}")
    return True, done, ""


# -- the adapter -------------------------------------------------------------------------------


class LioTarget:
    """Our target in the kernel's LIO, through configfs at ``configfs``."""

    def __init__(
        self,
        runner: Runner,
        configfs: str = "/sys/kernel/config",
        iqn: str = "iqn.2024-01.org.iscsi-ha:storage",
        luns: Sequence[Any] = ((1, "/dev/drbd/by-res/iscsi1/0"),),
        initiator_address: str = "ALL",
        default_time2wait: int = DEFAULT_TIME2WAIT,
        modprobe: str = "modprobe",
        timeout: Optional[float] = None,
    ) -> None:
        self.runner = runner
        self.root = configfs
        self.iqn = iqn
        self.specs = lun_specs(iqn, luns)
        self.initiator_address = initiator_address
        self.want = Desired(iqn, self.specs, int(default_time2wait))
        self.modprobe = modprobe
        self.timeout = timeout

    def state(self) -> LioState:
        return parse_tree(read_tree(self.root, self.iqn), self.iqn)

    def observe(self) -> TargetObservation:
        try:
            state = self.state()
        except Exception as exc:  # noqa: BLE001 - observe never raises: an error value instead
            return TargetObservation(
                daemon_running=True, backend="lio", error=f"cannot read {self.root}: {exc}"
            )
        planned = planned_info(self.specs, "lio")
        if not (state.loaded and state.iscsi):
            return TargetObservation(daemon_running=False, backend="lio", lun_info=planned)
        present = state.target or bool(state.devices)
        info = tuple(
            LunInfo(
                _number(d.name) or 0,
                serial=d.serial,
                wwn=lio_wwn(d.serial),
                vendor=d.vendor,
                product=d.product,
                write_cache=d.write_cache,
            )
            for d in state.devices
            if _number(d.name) is not None
        )
        return TargetObservation(
            daemon_running=True,
            target_present=present,
            serving=present and not missing(state, self.want),
            luns=len(state.luns),
            sessions=state.sessions,
            backend="lio",
            lun_info=tuple(sorted(info, key=lambda i: i.number)) if present else planned,
        )

    def start_daemon(self) -> StepResult:
        """Load the kernel target's modules (the "daemon" of LIO is the kernel) and make its
        iSCSI fabric directory (configfs creates ``target/iscsi`` on mkdir, measured)."""
        state = self.state()
        if state.loaded and state.iscsi:
            return StepResult(True, "kernel target (LIO) loaded")
        if state.loaded:
            ok, _, failure = apply(self.root, [("mkdir", "target/iscsi")])
            if ok and self.state().iscsi:
                return StepResult(True, "kernel target (LIO): iSCSI fabric made")
        for module in ("target_core_iblock", "iscsi_target_mod"):
            res = self.runner.run([self.modprobe, module], timeout=self.timeout)
            if not res.ok:
                return StepResult(
                    False,
                    (
                        f"kernel module {module} is not loaded and `{self.modprobe} {module}` "
                        f"failed: {res.describe_failure()}; run `modprobe {module}` (LIO needs "
                        f"{', '.join(LIO_MODULES)}) or set target.backend: tgt"
                    ),
                )
        state = self.state()
        if not state.loaded:
            return StepResult(
                False,
                (
                    f"the kernel target is loaded but {self.root}/target does not exist: configfs "
                    f"is not mounted; run `mount -t configfs none {self.root}`"
                ),
            )
        apply(self.root, [("mkdir", "target/iscsi")])
        state = self.state()
        if not state.iscsi:
            return StepResult(
                False, f"{self.root}/target/iscsi does not exist after `modprobe iscsi_target_mod`"
            )
        return StepResult(True, "loaded the kernel target (LIO) modules")

    def stop_daemon(self) -> StepResult:
        # The kernel target stays loaded (other targets may use it); ours goes.
        return self.stop_serving()

    def serve(self) -> StepResult:
        if self.initiator_address != "ALL":
            return StepResult(
                False,
                (
                    f"target.initiator_address is {self.initiator_address}: LIO admits "
                    "initiators by "
                    "name, not by address; set it to ALL with backend lio (and limit port 3260 to "
                    "the storage network with a firewall) or use target.backend: tgt"
                ),
            )
        state = self.state()
        if not (state.loaded and state.iscsi):
            return StepResult(False, "the kernel target (LIO) is not loaded")
        ops = plan_serve(state, self.want)
        ok, done, failure = apply(self.root, ops)
        what = f"target {self.iqn} serving {len(self.specs)} LUN(s) (LIO)"
        if not ok:
            return StepResult(False, f"{what}: after {len(done)} step(s): {failure}")
        if not ops:
            return StepResult(True, f"{what}: already in place")
        return StepResult(True, f"{what}: {len(done)} configfs step(s)")

    def stop_serving(self) -> StepResult:
        state = self.state()
        ops = plan_remove(state, self.iqn)
        if not ops:
            return StepResult(True, f"target {self.iqn} not present (LIO)")
        ok, done, failure = apply(self.root, ops)
        if not ok:
            return StepResult(False, f"removing {self.iqn} (LIO): {failure}")
        return StepResult(True, f"target {self.iqn} removed (LIO, {len(done)} steps)")
