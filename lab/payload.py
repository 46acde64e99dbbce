"""Run a command with an unpacked RPM payload at its real path, /opt/iscsi-ha, for it alone.

The RPM's scripts start with ``#!/opt/iscsi-ha/bin/python`` and its virtualenv names that path, so
the payload only runs where it will be installed. This machine must not get an /opt/iscsi-ha, so
the command runs in a private mount namespace (``unshare --mount``) where the payload is
bind-mounted there: the controller the tests and the lab start is then the shipped one, byte for
byte, and its PID is the command's PID (``exec`` all the way), so it is stopped like any other.

    python -m lab.payload --root DIR -- /opt/iscsi-ha/bin/iscsi-ha run --config FILE

``payload_argv(root, argv)`` builds that command line. ``ISCSI_HA_PAYLOAD=DIR`` makes the namespace
lab (``make demo``, tests/test_integration.py) start its controllers this way.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

PREFIX = "/opt/iscsi-ha"
ENV_VAR = "ISCSI_HA_PAYLOAD"


def payload_root() -> Optional[Path]:
    """The unpacked payload the lab should run, from ISCSI_HA_PAYLOAD (None: this virtualenv)."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    root = Path(value).resolve()
    if not (root / PREFIX.lstrip("/") / "bin" / "iscsi-ha").exists():
        raise SystemExit(
            f"{ENV_VAR}={value}: no {PREFIX}/bin/iscsi-ha under it (unpack the RPM "
            "there, e.g. with Dockerfile-build/inspect_rpm.py's unpack_newc)"
        )
    return root


def payload_argv(root: Path, argv: Sequence[str]) -> List[str]:
    """``argv`` run with ``root``'s /opt/iscsi-ha mounted at /opt/iscsi-ha."""
    return [
        "unshare",
        "--mount",
        sys.executable,
        "-S",
        os.path.abspath(__file__),
        "--root",
        str(root),
        "--",
        *argv,
    ]


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, timeout=30)


def _enter(root: Path) -> None:
    """Inside the new mount namespace: put root's payload at PREFIX, keep the rest of /opt."""
    _mount("--make-rprivate", "/")
    payload = root / PREFIX.lstrip("/")
    parent = os.path.dirname(PREFIX)
    if not os.path.isdir(PREFIX):
        # No mount point on the host and none may be created there: a tmpfs over /opt (in this
        # namespace only) holds one, and everything /opt had is bound back into it.
        keep = tempfile.mkdtemp(prefix="payload-opt-")
        _mount("--bind", parent, keep)
        _mount("-t", "tmpfs", "iscsi-ha-payload", parent)
        for name in os.listdir(keep):
            src, dst = os.path.join(keep, name), os.path.join(parent, name)
            if os.path.isdir(src) and not os.path.islink(src):
                os.mkdir(dst)
            elif os.path.islink(src):
                os.symlink(os.readlink(src), dst)
                continue
            else:
                open(dst, "w").close()
            _mount("--rbind", src, dst)
        os.mkdir(PREFIX)
    _mount("--bind", str(payload), PREFIX)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, type=Path, help="where the payload was unpacked")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command given")
    _enter(args.root.resolve())
    os.execvp(command[0], command)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
