#!/usr/bin/env python3
"""mypy over ``controller/`` and ``exporter/`` as the packages they are installed as.

The source folders become ``iscsi_ha.controller`` and ``iscsi_ha.exporter`` only when installed
(setup.py's package_dir), so their relative imports (``from ..exporter import ...``) mean nothing
to mypy run on the folders. This builds a view ``iscsi_ha/{controller,exporter}`` of symlinks
inside the virtualenv, runs mypy with ``mypy.ini`` on the two packages, and prints the errors
with the checkout's own paths. Exit status: mypy's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("controller", "exporter")


def view(base: Path) -> Path:
    pkg = base / "iscsi_ha"
    pkg.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        link = pkg / name
        if not link.is_symlink() or os.readlink(link) != str(ROOT / name):
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(ROOT / name)
    return base


def main(argv: list[str]) -> int:
    base = view(Path(sys.prefix) / "typecheck")
    mypy = Path(sys.executable).with_name("mypy")
    cmd = [
        str(mypy) if mypy.exists() else "mypy",
        "--config-file",
        str(ROOT / "mypy.ini"),
        "--cache-dir",
        str(ROOT / ".mypy_cache"),
    ]
    for name in PACKAGES:
        cmd += ["-p", f"iscsi_ha.{name}"]
    proc = subprocess.run(cmd + argv, cwd=base, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    for name in PACKAGES:
        out = out.replace(f"iscsi_ha/{name}/", f"{name}/")
    sys.stdout.write(out)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
