"""The LIO adapter on configfs trees captured from a real LIO (Linux 6.1, the VM lab's kernel).

``tests/fixtures/lio/*.json`` were written by ``lab/vm/lio_capture.py`` inside a lab VM: the
kernel target loaded, someone else's backstore and target beside ours, ours half built (a
controller killed mid-serve), served, removed; ``steps.json`` holds what each step returned and
what ``observe()`` said there. Here the pure half is checked on them: ``parse_tree`` and the
plans. What the kernel does with the plans is the VM scenarios' job (``test_vm_drbd.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from iscsi_ha.controller.systems import lio
from iscsi_ha.controller.systems.target import lio_wwn, lun_specs

LIO = Path(__file__).parent / "fixtures" / "lio"
IQN = "iqn.2024-01.org.iscsi-ha:vmlab"
FOREIGN = "iqn.2003-01.org.linux-iscsi.other:sn.1234"
WANT = lio.Desired(IQN, lun_specs(IQN, [(1, "/dev/vda")]))


def tree(name: str) -> lio.Tree:
    return lio.Tree.from_json((LIO / f"{name}.json").read_text())


def state(name: str) -> lio.LioState:
    return lio.parse_tree(tree(name), IQN)


def steps() -> dict:
    return {s["step"]: s for s in json.loads((LIO / "steps.json").read_text())}


def test_loaded_kernel_target_without_ours():
    s = state("loaded")
    assert s.loaded and s.iscsi and not s.target and not s.devices and not s.hba
    assert lio.missing(s, WANT) == [f"target {IQN} absent"]


def test_served_tree_is_complete_and_needs_nothing():
    s = state("served")
    assert s.target and s.tpg and s.tpg_enabled and s.demo_mode
    assert s.portals == (lio.PORTAL,) and s.luns == ((1, lio.device_name(1)),)
    assert s.time2wait == 2 and s.sessions == 0
    dev = s.device(lio.device_name(1))
    spec = WANT.luns[0]
    assert dev is not None and dev.enabled and dev.udev_path == "/dev/vda"
    assert (dev.serial, dev.vendor, dev.product) == (spec.serial, "ISCSI-HA", "DRBD-LUN")
    assert dev.write_cache is False
    assert lio.missing(s, WANT) == [] and lio.plan_serve(s, WANT) == []
    # What the real observe() said there (steps.json) agrees with this parse.
    seen = steps()["served"]["observe"]
    assert seen["serving"] and seen["lun_info"][0]["wwn"] == lio_wwn(spec.serial)
    assert seen["lun_info"][0]["serial"] == spec.serial


def test_same_config_gives_the_same_identity_on_both_hosts():
    # Two hosts derive it separately from the same file: equal, and equal to the capture.
    a, b = lun_specs(IQN, [(1, "/dev/drbd0")]), lun_specs(IQN, [(1, "/dev/drbd0")])
    assert a == b
    assert a[0].serial == state("served").device(lio.device_name(1)).serial
    assert lio_wwn(a[0].serial) == a[0].wwn  # tgt's scsi_id is chosen to give LIO's NAA


def test_a_half_built_target_is_adopted_not_rebuilt():
    s = state("partial")
    assert s.target and s.tpg and not s.luns and not s.tpg_enabled and s.devices
    plan = lio.plan_serve(s, WANT)
    kinds = [op[0] for op in plan]
    assert "rmdir" not in kinds and "unlink" not in kinds  # the backstore is kept as it is
    assert not any(op[1].startswith(f"target/core/{lio.HBA}/") for op in plan if op[0] == "mkdir")
    assert ("write", f"target/iscsi/{IQN}/tpgt_1/enable", "1") == plan[-1]
    assert steps()["served"]["note"]["ok"]  # and the real serve() from there succeeded


def test_foreign_objects_are_seen_and_never_touched():
    for name in ("foreign", "partial", "served", "removed"):
        s = state(name)
        assert "target/core/iblock_0" in s.others and f"target/iscsi/{FOREIGN}" in s.others
        for plan in (lio.plan_serve(s, WANT), lio.plan_remove(s, IQN)):
            for op in plan:
                paths = op[1:] if op[0] == "symlink" else op[1:2]
                assert not any("iblock_0" in p or FOREIGN in p for p in paths), op


def test_remove_takes_ours_children_first_and_leaves_the_rest():
    plan = lio.plan_remove(state("served"), IQN)
    paths = [op[1] for op in plan]
    assert plan[0] == ("write", f"target/iscsi/{IQN}/tpgt_1/enable", "0")
    assert (
        paths.index(f"target/iscsi/{IQN}/tpgt_1/lun/lun_1/{lio.LINK}")
        < paths.index(f"target/iscsi/{IQN}/tpgt_1/lun/lun_1")
        < paths.index(f"target/iscsi/{IQN}/tpgt_1")
    )
    assert paths[-1] == f"target/core/{lio.HBA}"
    s = state("removed")
    assert not s.target and not s.devices and not s.hba
    assert lio.plan_remove(s, IQN) == []


def test_wrong_serial_or_path_rebuilds_the_backstore_unexported_first():
    other = lio.Desired(IQN, lun_specs(IQN, [(1, "/dev/drbd0")]))
    plan = lio.plan_serve(state("served"), other)
    lun = f"target/iscsi/{IQN}/tpgt_1/lun/lun_1"
    dev = f"target/core/{lio.HBA}/{lio.device_name(1)}"
    assert plan[:3] == [("unlink", f"{lun}/{lio.LINK}"), ("rmdir", lun), ("rmdir", dev)]
    assert ("write", f"{dev}/udev_path", "/dev/drbd0") in plan
    pinned = lio.Desired(IQN, lun_specs(IQN, [lio_pinned()]))
    assert ("write", f"{dev}/wwn/vpd_unit_serial", "beaf11") in lio.plan_serve(
        state("served"), pinned
    )


def lio_pinned():
    from iscsi_ha.controller.config import Lun

    return Lun(1, "/dev/vda", serial="beaf11")


def test_write_cache_on_is_corrected():
    # iblock refuses emulate_write_cache=1 (measured: steps.json), fileio-like states would not.
    assert steps()["emulate_write_cache=1"]["note"].startswith("refused")
    t = tree("served")
    t.files[f"target/core/{lio.HBA}/{lio.device_name(1)}/attrib/emulate_write_cache"] = "1\n"
    s = lio.parse_tree(t, IQN)
    assert lio.missing(s, WANT) == ["LUN 1 write cache on"]
    assert lio.plan_serve(s, WANT) == [
        ("write", f"target/core/{lio.HBA}/{lio.device_name(1)}/attrib/emulate_write_cache", "0")
    ]


def test_time2wait_and_sessions_are_read_from_the_kernel_counters():
    t = tree("served")
    t.files[f"target/iscsi/{IQN}/tpgt_1/param/DefaultTime2Wait"] = "7\n"
    t.files[f"target/iscsi/{IQN}/{lio.SESSIONS}"] = "3\n"
    s = lio.parse_tree(t, IQN)
    assert s.sessions == 3 and s.time2wait == 7
    assert lio.plan_serve(s, WANT) == [
        ("write", f"target/iscsi/{IQN}/tpgt_1/param/DefaultTime2Wait", "2")
    ]


@pytest.mark.parametrize("name", ["loaded", "foreign", "partial", "served", "removed"])
def test_every_capture_parses_and_round_trips(name):
    t = tree(name)
    assert lio.Tree.from_json(t.to_json()) == t
    assert lio.parse_tree(t, IQN).loaded
