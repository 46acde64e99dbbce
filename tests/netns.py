"""Throwaway network namespaces for tests: one switch, a few hosts, torn down whatever happens.

The topology is the one in docs/design.md §12 A: a namespace holding a bridge ``br0`` (the
switch) and one namespace per host, each joined to the bridge by a veth pair whose host end is
``eth0``. Both ends of every veth are created directly inside their namespaces, so nothing ever
appears in the machine's own namespace and interface names cannot collide; namespace names are
machine-wide, so each lab gets a unique tag (pid + random suffix).

Tearing down deletes the namespaces and SIGKILLs, by PID, whatever still runs inside them (``ip
netns pids`` lists exactly the processes in a namespace this lab created): a tgtd or an arping a
failed test left behind would otherwise keep the namespace alive and hold its port.

``NetnsRunner`` wraps the real ``ProcessRunner`` so an adapter runs its commands inside a host's
namespace: every argv gets the prefix ``ip netns exec NS``. ``ip netns exec`` execs the command, so
the PID ``start_daemon`` returns is the daemon's own.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from typing import Dict, List, Mapping, Optional, Sequence

from iscsi_ha.controller.systems.runner import Background, CommandResult, ProcessRunner

SWITCH = "sw"


def unavailable(*tools: str) -> Optional[str]:
    """Why a namespace lab cannot run here (None when it can): for ``pytest.skip``."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [t for t in ("ip",) + tools if shutil.which(t) is None]
    if missing:
        return "missing tools: " + ", ".join(missing)
    return None


def _ip(*args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess:
    proc = subprocess.run(("ip",) + args, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed (rc {proc.returncode}): {proc.stderr}")
    return proc


class NetnsLab:
    """Hosts on one bridge. ``hosts`` maps a short host name to its ``eth0`` address/prefix.

    Use as a context manager (or call ``close()`` in a ``finally``)::

        with NetnsLab({"node1": "10.99.0.1/24", "client": "10.99.0.10/24"}) as lab:
            lab.run("client", ["ping", "-c", "1", "10.99.0.1"])
    """

    def __init__(self, hosts: Mapping[str, str], tag: Optional[str] = None) -> None:
        self.tag = tag or f"ih{os.getpid()}{secrets.token_hex(2)}"
        self.hosts: Dict[str, str] = dict(hosts)
        for host in self.hosts:
            # The switch-side veth is called "veth-HOST": interface names have 15 characters.
            if len(host) > 10 or host == SWITCH:
                raise ValueError(f"host name {host!r}: at most 10 characters, not {SWITCH!r}")
        self.ns: Dict[str, str] = {h: f"{self.tag}-{h}" for h in (SWITCH, *self.hosts)}
        self._created: List[str] = []

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> "NetnsLab":
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def up(self) -> None:
        sw = self.ns[SWITCH]
        self._add_ns(sw)
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "link", "set", "br0", "up")
        for host, address in self.hosts.items():
            ns = self.ns[host]
            self._add_ns(ns)
            veth = f"veth-{host}"
            _ip("-n", sw, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", sw, "link", "set", veth, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", address, "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def close(self) -> None:
        """Kill what still runs in our namespaces (by PID), then delete them. Never raises."""
        for name in reversed(self._created):
            self.kill_all(name)
            _ip("netns", "del", name, check=False)
        self._created.clear()

    @staticmethod
    def pids(namespace: str) -> List[int]:
        proc = _ip("netns", "pids", namespace, check=False)
        return [int(p) for p in proc.stdout.split() if p.isdigit()]

    def kill_all(self, namespace: str) -> List[int]:
        killed = []
        for pid in self.pids(namespace):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        return killed

    # -- using it ----------------------------------------------------------------------------

    def argv(self, host: str, argv: Sequence[str]) -> List[str]:
        return ["ip", "netns", "exec", self.ns[host], *argv]

    def run(
        self, host: str, argv: Sequence[str], timeout: float = 10.0, check: bool = True
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            self.argv(host, argv), capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{host}: `{' '.join(argv)}` failed (rc {proc.returncode}): {proc.stderr}"
            )
        return proc

    def address(self, host: str) -> str:
        """The host's own address, without the prefix."""
        return self.hosts[host].split("/")[0]

    def mac(self, host: str, interface: str = "eth0") -> str:
        path = f"/sys/class/net/{interface}/address"
        # /sys shows the namespace of whoever mounted it: read it from inside the namespace.
        return self.run(host, ["cat", path]).stdout.strip()

    def neighbour(self, host: str, address: str) -> Optional[str]:
        """The MAC ``host`` has cached for ``address`` (None when it has none usable)."""
        out = _ip("-n", self.ns[host], "neigh", "show", address, check=False).stdout.split()
        if "lladdr" in out and "FAILED" not in out and "INCOMPLETE" not in out:
            return out[out.index("lladdr") + 1]
        return None

    def partition(self, host: str) -> None:
        _ip("-n", self.ns[SWITCH], "link", "set", f"veth-{host}", "down")

    def heal(self, host: str) -> None:
        _ip("-n", self.ns[SWITCH], "link", "set", f"veth-{host}", "up")

    def runner(self, host: str, default_timeout: float = 10.0) -> "NetnsRunner":
        """A runner whose commands run on ``host`` (for the adapters under test)."""
        return NetnsRunner(self.ns[host], ProcessRunner(default_timeout=default_timeout))


class NetnsRunner:
    """A runner whose commands run inside one network namespace (``ip netns exec NS argv``)."""

    def __init__(self, namespace: str, inner: Optional[ProcessRunner] = None) -> None:
        self.namespace = namespace
        self.inner = inner or ProcessRunner()

    def _wrap(self, argv: Sequence[str]) -> List[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def run(
        self, argv: Sequence[str], timeout: Optional[float] = None, input: Optional[str] = None
    ) -> CommandResult:
        res = self.inner.run(self._wrap(argv), timeout=timeout, input=input)
        # Report the command as the adapter issued it, so messages read as in production.
        return CommandResult(
            tuple(argv), res.rc, res.stdout, res.stderr, res.duration, res.timed_out
        )

    def spawn(self, argv: Sequence[str], timeout: Optional[float] = None) -> Optional[Background]:
        return self.inner.spawn(self._wrap(argv), timeout=timeout)

    def start_daemon(self, argv: Sequence[str], log_path: Optional[str] = None) -> Optional[int]:
        return self.inner.start_daemon(self._wrap(argv), log_path)
