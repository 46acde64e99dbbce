"""A pool host's own iSCSI connection across a move of the VIP, in a network namespace lab.

Run inside one host's namespace (``ip netns exec NS python -m lab.own_sessions ...``), it plays
what a pool host does: a listener on :PORT stands in for its target, and a connection from this
host to the VIP stands in for its own initiator (XenServer's PBD). The other host's namespace
(``--other``) runs a listener on :PORT too (started by the caller).

``--side old``: the VIP is here; it is removed through the controller's Vip adapter (with or
without ``VipSessions`` attached), and ``--after`` seconds later bound in the other namespace
(``ip -n OTHER``) and announced. ``--side new``: the VIP is on the other host; it is removed there,
and ``--after`` seconds later bound here through the Vip adapter. Either way the connection sends
a few bytes after the release, as an initiator with I/O in flight would, and waits for its error.

Prints one JSON object: when the VIP was bound again (``bind_from``: the ``ip addr add`` started)
and when, if within ``--observe`` s, the connection failed and how, relative to the release; what
``ss`` showed before and after; and the source of a new connection (the reconnect's view).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import threading
import time
from typing import Any, Dict, List

from iscsi_ha.controller.systems.runner import ProcessRunner
from iscsi_ha.controller.systems.vip import Vip
from iscsi_ha.controller.systems.vip_sessions import VipSessions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vip", required=True, help="ADDRESS/PREFIX on eth0")
    ap.add_argument("--other", required=True, help="the other host's namespace name")
    ap.add_argument("--side", choices=("old", "new"), default="old")
    ap.add_argument("--port", type=int, default=3260)
    ap.add_argument("--after", type=float, default=0.5, help="release -> bound again")
    ap.add_argument("--observe", type=float, default=4.0, help="how long to wait for the error")
    ap.add_argument("--wait", type=float, default=10.0, help="VipSessions' wait; 0 = not attached")
    ap.add_argument(
        "--idle",
        action="store_true",
        help="send nothing after the release: no retransmission can end the connection, only "
        "VipSessions (or the observation's end) does",
    )
    args = ap.parse_args()
    address = args.vip.split("/")[0]
    other: List[str] = ["ip", "-n", args.other]

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", args.port))
    srv.listen()
    conn = socket.create_connection((address, args.port), timeout=5)
    accepted = srv.accept()[0] if args.side == "old" else None
    out: Dict[str, Any] = {"side": args.side, "source": conn.getsockname()[0]}
    ss = ["ss", "-tnH", "dst", address, "dport", "=", f":{args.port}"]
    out["ss_before"] = subprocess.run(ss, capture_output=True, text=True).stdout

    runner = ProcessRunner(default_timeout=10)
    sessions = VipSessions(runner, address, args.port, wait=args.wait) if args.wait > 0 else None
    vip = Vip(
        runner,
        address=args.vip,
        interface="eth0",
        on_released=sessions.after_release if sessions else None,
        on_bound=sessions.after_bind if sessions else None,
    )
    t0 = time.monotonic()
    bound: Dict[str, float] = {}

    def bind_again() -> None:
        time.sleep(args.after)
        bound["from"] = time.monotonic() - t0
        if args.side == "old":
            subprocess.run(other + ["addr", "add", args.vip, "dev", "eth0"], check=True)
            announce = ["ip", "netns", "exec", args.other]
        else:
            vip.bind()
            announce = []
        bound["at"] = time.monotonic() - t0
        subprocess.run(
            announce + ["arping", "-U", "-c", "1", "-I", "eth0", address],
            capture_output=True,
            timeout=5,
        )

    if args.side == "old":
        out["release"] = vip.unbind().message
    else:
        subprocess.run(other + ["addr", "del", args.vip, "dev", "eth0"], check=True)
        out["release"] = f"{args.vip} removed from {args.other}"
    threading.Thread(target=bind_again, daemon=True).start()
    conn.settimeout(args.observe)
    try:
        if not args.idle:
            conn.sendall(b"in flight")
        conn.recv(1)  # nothing will come: only an error ends this
        out["error"] = "closed"
    except socket.timeout:
        out["error"] = None
    except OSError as exc:
        out["error"] = type(exc).__name__
    out["ended_at"] = round(time.monotonic() - t0, 4) if out["error"] else None
    out["bind_from"] = round(bound.get("from", -1.0), 4)
    out["bound_at"] = round(bound.get("at", -1.0), 4)
    out["ss_after"] = subprocess.run(ss, capture_output=True, text=True).stdout
    try:  # what the initiator's reconnect meets now
        with socket.create_connection((address, args.port), timeout=2) as again:
            out["reconnect_source"] = again.getsockname()[0]
    except OSError as exc:
        out["reconnect_source"] = f"failed: {exc}"
    for s in (conn, accepted, srv):
        if s is not None:
            s.close()
    time.sleep(0.3)  # let the watcher log its line
    print(json.dumps(out))


if __name__ == "__main__":
    main()
