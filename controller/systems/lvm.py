"""LVM's device filter, as ``lvmconfig`` reports it, for the data-safety audit.

A host that lets LVM scan the DRBD backing device, or ``/dev/drbdN`` itself, finds the VMs' volume
groups twice (or on the Secondary's stale copy) and may activate or even write LVM metadata there:
the SR's data changes under DRBD's feet. The seed's how-to makes a filter that rejects both
mandatory. ``lvmconfig --typeconfig full devices/filter devices/global_filter`` prints the
effective values (defaults included), one ``key=[...]`` line each; dom0's LVM (2.02) has it.

LVM's rule (lvm.conf(5)): the patterns are tried in order, the first one whose regular expression
matches the device name decides ("a" accepts, "r" rejects), and a device no pattern matches is
accepted. A device is scanned only if both ``filter`` and ``global_filter`` accept it.

The second use: a read-only snapshot of the split-brain victim's backing device before DRBD
discards its changes (``iscsi-cfg split-brain resolve --snapshot``). ``lvs`` with a fixed column
list and separator, sizes in bytes without suffix: one line of five fields per volume
(``vg0|r0|67108864|62914560|-wi-ao----``); a device that is not a logical volume makes ``lvs``
fail and say why. The snapshot is ``lvcreate --snapshot --permission r``. Those outputs were
captured from the real lvm2 2.03 in the VM lab (``tests/fixtures/lvm``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from ..report import FilterVerdict
from .runner import CommandResult

LVMCONFIG_ARGS = ("--typeconfig", "full", "devices/filter", "devices/global_filter")
MAX_PATTERNS = 256


class LvmParseError(Exception):
    """lvmconfig's output could not be read; the message quotes it."""


@dataclass(frozen=True)
class Pattern:
    accept: bool
    regex: str


@dataclass(frozen=True)
class LvmFilters:
    filter: Tuple[Pattern, ...]
    global_filter: Tuple[Pattern, ...]

    def accepts(self, device: str) -> bool:
        return _accepts(self.filter, device) and _accepts(self.global_filter, device)


def _accepts(patterns: Sequence[Pattern], device: str) -> bool:
    for p in patterns:
        try:
            if re.search(p.regex, device):
                return p.accept
        except re.error:
            continue  # LVM would refuse the file; judged by what the other patterns say
    return True


def parse_pattern(text: str) -> Pattern:
    """``a|regex|`` / ``r|regex|`` (any delimiter after the letter, LVM allows several)."""
    if len(text) < 3 or text[0] not in "ar" or text[-1] != text[1]:
        raise LvmParseError(f"not an LVM filter pattern: {text!r}")
    return Pattern(text[0] == "a", text[2:-1])


def parse_lvmconfig(text: str) -> LvmFilters:
    values = {}
    for line in text.splitlines():
        line = line.strip()
        m = re.fullmatch(r"(filter|global_filter)=(\[.*\]|\".*\")", line)
        if not m:
            continue
        raw = m.group(2)
        try:
            items = json.loads(raw) if raw.startswith("[") else [json.loads(raw)]
        except ValueError:
            raise LvmParseError(f"cannot read {line[:120]!r}") from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise LvmParseError(f"not a list of strings: {line[:120]!r}")
        if len(items) > MAX_PATTERNS:
            raise LvmParseError(f"{len(items)} patterns, more than {MAX_PATTERNS}")
        values[m.group(1)] = tuple(parse_pattern(i) for i in items)
    if not values:
        raise LvmParseError(f"no filter in lvmconfig's output: {text[:200]!r}")
    return LvmFilters(values.get("filter", ()), values.get("global_filter", ()))


def judge_filters(
    filters: LvmFilters, drbd_devices: Sequence[str], backing: Sequence[str]
) -> List[FilterVerdict]:
    """Each device, and whether LVM leaves it alone. ``/dev/drbdN`` is also judged under its
    by-res name when given as such; the backing device as DRBD names it."""
    out = [FilterVerdict(d, "drbd", not filters.accepts(d)) for d in drbd_devices]
    out += [FilterVerdict(d, "backing", not filters.accepts(d)) for d in backing]
    return out


def lvmconfig_argv(lvmconfig: str = "lvmconfig") -> List[str]:
    return [lvmconfig, *LVMCONFIG_ARGS]


# ---------------------------------------------------------------- the split-brain snapshot

LVS_FIELDS = "vg_name,lv_name,lv_size,vg_free,lv_attr"
LVS = ("lvs", "--noheadings", "--nosuffix", "--units", "b", "--separator", "|", "-o", LVS_FIELDS)


@dataclass(frozen=True)
class Volume:
    vg: str
    lv: str
    size: int  # bytes
    vg_free: int  # bytes free in the volume group
    attr: str

    @property
    def name(self) -> str:
        return f"{self.vg}/{self.lv}"


def parse_lvs(text: str) -> Tuple[Volume, ...]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        parts = line.split("|")
        if len(parts) != 5 or not parts[2].isdigit() or not parts[3].isdigit():
            raise LvmParseError(f"cannot read lvs: {line[:120]!r} (expected {LVS_FIELDS})")
        out.append(Volume(parts[0], parts[1], int(parts[2]), int(parts[3]), parts[4]))
    return tuple(out)


def _words(res: CommandResult) -> str:
    text = (res.stderr or res.stdout).strip()
    return " ".join(text.split())[:300] or f"rc {res.rc}"


class Lvm:
    def __init__(self, runner: Any, timeout: Optional[float] = None) -> None:
        self.runner = runner
        self.timeout = timeout

    def volume_of(self, device: str) -> Tuple[Optional[Volume], Optional[str]]:
        """(the logical volume ``device`` is, None) or (None, why it is not one)."""
        res = self.runner.run((*LVS, device), timeout=self.timeout)
        if not res.ok:
            return None, f"{device} is not a logical volume (lvs: {_words(res)})"
        try:
            volumes = parse_lvs(res.stdout)
        except LvmParseError as exc:
            return None, str(exc)
        if len(volumes) != 1:
            return None, f"lvs {device} named {len(volumes)} volumes"
        return volumes[0], None

    def snapshot(self, volume: Volume, name: str, size: int) -> Tuple[bool, str]:
        """A read-only snapshot ``name`` of ``volume`` with ``size`` bytes of copy-on-write
        space; (done, lvcreate's words)."""
        argv = (
            "lvcreate",
            "--snapshot",
            "--permission",
            "r",
            "--name",
            name,
            "--size",
            f"{size}b",
            volume.name,
        )
        res = self.runner.run(argv, timeout=self.timeout)
        return res.ok, f"{' '.join(argv)}: {_words(res) if not res.ok else 'ok'}"
