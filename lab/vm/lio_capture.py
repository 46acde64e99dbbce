#!/usr/bin/env python3
"""Capture LIO's configfs tree at each step of the lio backend's life, inside a lab VM.

Run inside a VM of the lab (``python -m lab.vm.capture_lio`` boots one and does)::

    lio_capture.py OUT_DIR BLOCK_DEVICE

Writes ``OUT_DIR/<step>.json`` (``lio.Tree`` snapshots, what ``read_tree`` reads) for:

* ``loaded``: the modules loaded, nothing configured;
* ``foreign``: someone else's backstore (``iblock_0``) and target, made here as targetcli would;
* ``partial``: ours half built, as a controller killed mid-serve leaves it (backstore and
  target, no LUN, TPG disabled);
* ``served``: after ``LioTarget.serve()`` adopted and completed it;
* (``emulate_write_cache=1`` tried behind our back: iblock refuses it; the outcome is in
  ``steps.json``);
* ``removed``: after ``stop_serving()``: the foreign objects are still there.

and ``steps.json`` with each step's ``StepResult`` and what ``observe()`` said. Stdlib plus the
project's package; the VM lab's Python (the host's venv through the shared root).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from iscsi_ha.controller.systems import lio
from iscsi_ha.controller.systems.runner import ProcessRunner

ROOT = "/sys/kernel/config"
IQN = "iqn.2024-01.org.iscsi-ha:vmlab"
FOREIGN_IQN = "iqn.2003-01.org.linux-iscsi.other:sn.1234"


def main() -> int:
    out, device = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    target = lio.LioTarget(ProcessRunner(), configfs=ROOT, iqn=IQN, luns=((1, device),))
    steps = []

    def snap(name: str, note: object = None) -> None:
        tree = lio.read_tree(ROOT, IQN)
        # The foreign target's part too, so the fixtures show what must stay untouched.
        lio._walk(ROOT, f"target/iscsi/{FOREIGN_IQN}", tree)
        lio._walk(ROOT, "target/core/iblock_0", tree)
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            f.write(tree.to_json())
        steps.append({"step": name, "note": note, "observe": dataclasses.asdict(target.observe())})

    snap("loaded", dataclasses.asdict(target.start_daemon()))
    # Someone else's objects (a loop device stands in for their disk).
    foreign = [
        ("mkdir", "target/core/iblock_0"),
        ("mkdir", "target/core/iblock_0/theirs"),
        ("write", "target/core/iblock_0/theirs/control", "udev_path=/dev/loop0"),
        ("mkdir", f"target/iscsi/{FOREIGN_IQN}"),
        ("mkdir", f"target/iscsi/{FOREIGN_IQN}/tpgt_1"),
    ]
    steps.append({"step": "foreign-apply", "note": lio.apply(ROOT, foreign)})
    snap("foreign")
    plan = lio.plan_serve(target.state(), target.want)
    # Killed mid-serve: the backstore, the target and TPG made, no LUN, not enabled.
    cut = [
        op
        for op in plan
        if op[0] != "symlink"
        and "/lun/" not in op[1]
        and not op[1].endswith("tpgt_1/enable")
        and "/np/" not in op[1]
    ]
    steps.append({"step": "partial-apply", "note": lio.apply(ROOT, cut)})
    snap("partial")
    snap("served", dataclasses.asdict(target.serve()))
    # iblock refuses the target's own write cache (EINVAL, measured on 6.1): the WCE bit an
    # initiator sees mirrors the block device's queue; recorded, not assumed.
    dev = f"{ROOT}/target/core/{lio.HBA}/{lio.device_name(1)}/attrib/emulate_write_cache"
    try:
        with open(dev, "w") as f:
            f.write("1")
        outcome = "accepted"
    except OSError as exc:
        outcome = f"refused: {exc.strerror}"
    steps.append({"step": "emulate_write_cache=1", "note": outcome})
    snap("removed", dataclasses.asdict(target.stop_serving()))
    lio.apply(
        ROOT,
        [
            ("rmdir", f"target/iscsi/{FOREIGN_IQN}/tpgt_1"),
            ("rmdir", f"target/iscsi/{FOREIGN_IQN}"),
            ("rmdir", "target/core/iblock_0/theirs"),
            ("rmdir", "target/core/iblock_0"),
        ],
    )
    with open(os.path.join(out, "steps.json"), "w") as f:
        json.dump(steps, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
