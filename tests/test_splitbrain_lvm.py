"""The split-brain snapshot option over real lvm2 and drbdadm outputs.

``tests/fixtures/lvm/lvm-node1.txt`` was captured by ``lab/vm/capture_lvm.py`` in the VM lab
(lvm2 2.03 on Debian 12, DRBD 8.4.11 on a 64 MiB logical volume ``vg0/r0``). The runner answers
each command with what the real tools said; the real thing runs in tests/test_vm_splitbrain.py.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import pytest
from drbd_captures import read_frames
from fakes import FakeRunner
from iscsi_ha.controller import splitbrain as sb
from iscsi_ha.controller.splitbrain_ops import SplitBrainRefused, _backing, snapshot
from iscsi_ha.controller.systems.drbd import Drbd, DrbdParseError
from iscsi_ha.controller.systems.drbd.backing import parse_sh_ll_dev
from iscsi_ha.controller.systems.lvm import LvmParseError, parse_lvs
from test_splitbrain import both

CAPTURE = Path(__file__).parent / "fixtures" / "lvm" / "lvm-node1.txt"
FRAMES = read_frames(CAPTURE)


def frame(prefix: str, n: int = 0):
    found = [f for f in FRAMES if f.command.startswith(prefix)]
    return found[n]


def runner(*skip: str) -> FakeRunner:
    """Answers every captured command (the first capture of each) but those in ``skip``."""
    fake = FakeRunner()
    for f in reversed(FRAMES):  # answer() puts later rules first: keep the first capture
        if not any(f.command.startswith(s) for s in skip):
            fake.answer(tuple(shlex.split(f.command)), rc=f.rc, stdout=f.stdout, stderr=f.stderr)
    return fake


def test_real_outputs_parse():
    assert parse_sh_ll_dev(frame("drbdadm sh-ll-dev").stdout) == ("/dev/vg0/r0",)
    (vol,) = parse_lvs(frame("lvs --noheadings").stdout)
    assert (vol.name, vol.size) == ("vg0/r0", 64 * 1024 * 1024)
    assert 0 < vol.vg_free < 128 * 1024 * 1024
    with pytest.raises(DrbdParseError):
        parse_sh_ll_dev("r0: no such resource\n")
    with pytest.raises(LvmParseError):
        parse_lvs("  vg0|r0|sixty-four|0|-wi-a-----\n")


def test_backing_on_lvm_and_a_device_that_is_not():
    drbd = Drbd(runner(), version="8.4")
    device, volume, why = _backing(drbd, "r0")
    assert device == "/dev/vg0/r0" and volume.name == "vg0/r0" and why is None
    # /dev/vda itself is a physical volume, not a logical one: lvs says so, and so do we.
    fake = runner()
    fake.answer(("drbdadm", "sh-ll-dev", "r0"), stdout="/dev/vda\n")
    device, volume, why = _backing(Drbd(fake, version="8.4"), "r0")
    assert volume is None and "/dev/vda is not a logical volume" in why
    assert frame("lvs --noheadings", 1).command.endswith("/dev/vda")


def test_snapshot_runs_lvcreate_read_only_with_the_size_asked():
    fake = runner()
    out = snapshot(Drbd(fake, version="8.4"), "r0", "20261202T021500", 1000000000, "uid 0")
    assert fake.ran("lvcreate") == [tuple(shlex.split(frame("lvcreate").command))]
    assert out["snapshot"] == "vg0/r0-splitbrain-20261202T021500"
    # The real lvcreate's answer to more than the free space: refused, in its words.
    assert out["ok"] is False and "insufficient free space" in out["said"]
    out = snapshot(Drbd(fake, version="8.4"), "r0", "20261202T021501", 16777216, "uid 0")
    assert out["ok"] is True and out["snapshot"] == "vg0/r0-splitbrain-20261202T021501"
    with pytest.raises(SplitBrainRefused):
        snapshot(Drbd(fake, version="8.4"), "r0", "../../etc", 1 << 20, "uid 0")
    with pytest.raises(SplitBrainRefused):
        snapshot(Drbd(fake, version="8.4"), "r0", "20261202T021500", True, "uid 0")


def test_snapshot_size_and_refusal_are_pure():
    n1, n2 = both()
    a = sb.assess(n1, n2)
    # 64 + 256 KiB changed, doubled, is below the floor: 32 MiB.
    assert sb.snapshot_size(a, "node2") == 32 * 1024 * 1024
    assert "cannot be snapshotted: not on LVM" in sb.snapshot_refusal(a, "node2")
    n1 = replace(n1, backing="/dev/vg0/r0", lvm_volume="vg0/r0", lvm_free=8 * 1024 * 1024)
    a = sb.assess(n1, n2)
    assert "has 8.0 MiB free; a snapshot needs 32.0 MiB" in sb.snapshot_refusal(a, "node2")
    n1 = replace(n1, lvm_free=60 * 1024 * 1024)
    a = sb.assess(n1, n2)
    assert sb.snapshot_refusal(a, "node2") is None
    assert "Keep a copy first: add --snapshot" in sb.render(a)
    assert "lvremove vg0/r0-splitbrain-x" in sb.snapshot_help("node1", "vg0/r0-splitbrain-x")
