"""LVM, for one thing: a read-only snapshot of the split-brain victim's backing device before
DRBD discards its changes (``iscsi-cfg split-brain resolve --snapshot``).

``lvs`` with a fixed column list and separator, sizes in bytes without suffix, so the answer is
one line of five fields per volume (``vg0|r0|67108864|58720256|-wi-ao----``); a device that is
not a logical volume makes ``lvs`` fail, and says why. The snapshot is ``lvcreate --snapshot
--permission r``: the victim's data as it was, kept while DRBD rewrites the origin. Outputs
parsed here were captured from the real lvm2 2.03 in the VM lab (``tests/fixtures/lvm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

from .runner import CommandResult

LVS_FIELDS = "vg_name,lv_name,lv_size,vg_free,lv_attr"
LVS = ("lvs", "--noheadings", "--nosuffix", "--units", "b", "--separator", "|", "-o",
       LVS_FIELDS)


class LvmParseError(ValueError):
    pass


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
        argv = ("lvcreate", "--snapshot", "--permission", "r", "--name", name, "--size",
                f"{size}b", volume.name)
        res = self.runner.run(argv, timeout=self.timeout)
        return res.ok, f"{' '.join(argv)}: {_words(res) if not res.ok else 'ok'}"
