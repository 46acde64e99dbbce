"""The peer channel in the namespace lab: each node's key and certificate (made by the real
``iscsi-cfg peer-cert``, i.e. openssl), the other's certificate pinned, and the ``peer:`` section
of each node's configuration, listening on the node's own address.

    configs = peer_configs(lab)           # {"node1": {"peer": {...}}, "node2": {...}}
    start_cluster(lab, configs=configs)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

from .netlab import Lab

PEER_PORT = 19857  # each node has its own namespace: the product's default port on every node
CLI = Path(sys.executable).parent / "iscsi-cfg"


def peer_configs(
    lab: Lab, port: int = PEER_PORT, timeout: float = 2.0
) -> Dict[str, Dict[str, Any]]:
    dirs = {}
    for node in lab.nodes:
        d = node.dir / "peer"
        if not (d / "host.crt").exists():
            subprocess.run(
                [str(CLI), "peer-cert", "--dir", str(d), "--name", node.name],
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            )
        dirs[node.name] = d
    out: Dict[str, Dict[str, Any]] = {}
    for node in lab.nodes:
        other = next(n for n in lab.nodes if n is not node)
        mine = dirs[node.name]
        shutil.copyfile(dirs[other.name] / "host.crt", mine / "peer.crt")
        out[node.name] = {
            "peer": {
                "address": other.addr,
                "port": port,
                "listen": f"{node.addr}:{port}",
                "cert_file": str(mine / "host.crt"),
                "key_file": str(mine / "host.key"),
                "peer_cert_file": str(mine / "peer.crt"),
                "timeout": timeout,
            }
        }
    return out
