#!/usr/bin/env python3
"""Regenerate tests/fixtures/lio/ from a real LIO: boot one lab VM, run lio_capture.py inside.

    flock <vm lab lock> python -m lab.vm.capture_lio [OUT_DIR]     (root; default the fixtures)

The VM's virtio disk (/dev/vda) stands in for the DRBD device (LIO's iblock takes any block
device). Everything started is stopped by the lab's teardown.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .harness import VmLab

REPO = Path(__file__).resolve().parent.parent.parent


def main(argv: list) -> int:
    out = Path(argv[0]) if argv else REPO / "tests" / "fixtures" / "lio"
    lab = VmLab(Path(f"/tmp/iscsi-ha-capture-lio-{id(out)}"))
    try:
        lab.prepare({})
        vm = lab.vm("node1")
        lab.boot([vm])
        res = vm.run(
            [lab.python, str(REPO / "lab" / "vm" / "lio_capture.py"), "/run/lab/lio", "/dev/vda"],
            timeout=300,
        )
        if res.rc != 0:
            print(res.err[-3000:], file=sys.stderr)
            return 1
        out.mkdir(parents=True, exist_ok=True)
        for path in sorted((vm.xdir / "lio").glob("*.json")):
            shutil.copy(path, out / path.name)
            print(out / path.name)
        return 0
    finally:
        lab.teardown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
