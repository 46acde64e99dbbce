"""The real controller inside each VM, driven from the host like a pool would drive it.

Each VM runs ``iscsi-ha run`` from the project's virtualenv (visible through the shared root)
with a configuration written into its exchange share (``/run/lab/iscsi-ha.yaml`` inside):
the real ``drbdadm``, ``/proc/drbd`` and ``dmesg`` of the VM's kernel, a ``tgtd`` with the VM's own
control port, the VIP on the client-facing NIC (``eth1``), no XenAPI (the pool role comes from
``/run/lab/pool.conf``, which the host rewrites to move the pool master). The controller is a
child of the VM's agent, so killing the VM kills it too.

The client is the host side of the LAN bridge (in the lab's namespace): ``iscsi-inq`` and
``lab/iscsi_block.py`` (block reads and writes with libiscsi) through the VIP, always under
timeout(1). Metrics are read inside the VM from the exporter (urllib on 127.0.0.1).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .harness import VIP, Result, Vm, VmError, VmLab, drbd_resource

REPO = Path(__file__).resolve().parent.parent.parent
BLOCK_TOOL = REPO / "lab" / "iscsi_block.py"
IQN = "iqn.2024-01.org.iscsi-ha:vmlab"
RES = "r0"
EXPORTER_PORT = 9856
PEER_PORT = 19857
# A slower resync than the comparison's, so a 2 s controller cycle sees it in progress.
SLOW_SYNC = "\tdisk { c-plan-ahead 0; resync-rate 6M; }\n"


def resources(lab: VmLab) -> Dict[str, str]:
    text = drbd_resource(RES, 0, 7789, lab.vms)
    text = text.replace("\tdisk { c-plan-ahead 0; resync-rate 100M; }\n", SLOW_SYNC)
    return {RES: text}


def config(vm: Vm, backend: str = "tgt") -> Dict[str, Any]:
    return {
        "node_name": vm.name,
        "interval": 2,  # a cycle takes 1-3 s under TCG
        "cycle_deadline": 10,
        "command_timeout": 10,
        "resources": [RES],
        "drbd": {
            "version": "8.4",
            "drbdadm": "drbdadm",
            "proc_drbd": "/proc/drbd",
            "kernel_log": ["dmesg"],
        },
        "pool": {"conf": "/run/lab/pool.conf"},
        "xenapi": {"enabled": False},
        "target": {
            "backend": backend,
            "control_port": vm.index,
            "tid": 1,
            "iqn": IQN,
            "luns": [{"lun": 1, "path": "/dev/drbd0"}],
            "stop_timeout": 3,
            "log_file": "/run/lab/tgtd.log",
        },
        "vip": {"address": VIP, "interface": vm.lan_if, "announce_interval": 10},
        "paths": {
            "state_dir": "/run/lab/state",
            "status_file": "/run/lab/state/status",
            "control_socket": "/run/iscsi-ha/control.sock",
        },
        "exporter": {"enabled": True, "listen": f"0.0.0.0:{EXPORTER_PORT}"},
        "logging": {"level": "info", "syslog": False},
    }


def start_pair(
    lab: VmLab,
    backend: str = "tgt",
    settle_limit: Optional[float] = 180.0,
    *,
    prepare: Optional[Callable[[Vm], None]] = None,
    peer_timeout: Optional[float] = None,
    edit: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> "Controllers":
    """On a booted lab: ``prepare(vm)`` if given (an LVM disk, DRBD's handler path), fresh DRBD
    meta data and `up` on both VMs (as the distribution's drbd service does at boot), the
    controllers' configs (with the peer channel when ``peer_timeout`` is given, then ``edit``),
    pool master node1, a controller in each VM; returns once node1 alone serves at the VIP
    (at once when ``settle_limit`` is None: the caller watches the bring-up itself)."""
    for vm in lab.vms:
        if prepare is not None:
            prepare(vm)
        vm.run(["drbdadm", "--", "--force", "create-md", RES], timeout=60, check=True)
        # The controller cannot do this step itself on 8.4: before `up` real drbdadm answers
        # rc 10 "Device minor not allocated", which it reads as an error.
        vm.run(["drbdadm", "up", RES], timeout=60, check=True)
    c = Controllers(lab, backend, peer_timeout=peer_timeout, edit=edit)
    c.write_configs()
    c.set_pool_master("node1")
    for vm in lab.vms:
        c.start(vm)
    if settle_limit is not None:
        c.settle("node1", limit=settle_limit)
    return c


def peer_certs(lab: VmLab) -> None:
    """Each VM's peer-channel key and certificate (the real ``iscsi-cfg peer-cert``, i.e.
    openssl) in its exchange share, and the other VM's certificate pinned beside them."""
    for vm in lab.vms:
        d = vm.xdir / "peer"
        if (d / "host.crt").exists():
            continue
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "iscsi-cfg"), "peer-cert", "--dir", str(d)]
            + ["--name", vm.name],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise VmError(f"iscsi-cfg peer-cert for {vm.name}: {proc.stderr.strip()}")
    for vm in lab.vms:
        other = next(o for o in lab.vms if o is not vm)
        (vm.xdir / "peer" / "peer.crt").write_text((other.xdir / "peer" / "host.crt").read_text())


def peer_section(vm: Vm, other: Vm, timeout: float) -> Dict[str, Any]:
    """The ``peer:`` configuration of ``vm``, talking to ``other`` over the LAN."""
    return {
        "address": other.lan_addr,
        "port": PEER_PORT,
        "listen": f"{vm.lan_addr}:{PEER_PORT}",
        "cert_file": "/run/lab/peer/host.crt",
        "key_file": "/run/lab/peer/host.key",
        "peer_cert_file": "/run/lab/peer/peer.crt",
        "timeout": timeout,
    }


class Controllers:
    """Start/stop the controllers, move the pool master, read metrics, act as the client."""

    def __init__(
        self,
        lab: VmLab,
        backend: str = "tgt",
        peer_timeout: Optional[float] = None,
        edit: Optional[Callable[[Dict[str, Any]], None]] = None,
    ) -> None:
        self.lab = lab
        self.backend = backend  # "tgt" or "lio": which target the controllers drive
        self.peer_timeout = peer_timeout  # None: no peer channel
        self.edit = edit  # a test's changes to every VM's configuration
        self.pids: Dict[str, int] = {}
        self.venv_bin = Path(sys.executable).parent

    def write_configs(self) -> None:
        import yaml  # a dependency of the product

        if self.peer_timeout is not None:
            peer_certs(self.lab)
        for vm in self.lab.vms:
            cfg = config(vm, self.backend)
            if self.peer_timeout is not None:
                other = next(o for o in self.lab.vms if o is not vm)
                cfg["peer"] = peer_section(vm, other, self.peer_timeout)
            if self.edit is not None:
                self.edit(cfg)
            (vm.xdir / "state").mkdir(exist_ok=True)
            (vm.xdir / "iscsi-ha.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    def set_pool_master(self, master: Optional[str]) -> None:
        """What pool.conf says on each host (None: both 'master'-less, i.e. unknown)."""
        for vm in self.lab.vms:
            if master is None:
                text = ""
            elif vm.name == master:
                text = "master"
            else:
                text = "slave:" + self.lab.vm(master).lan_addr
            tmp = vm.xdir / "pool.conf.tmp"
            tmp.write_text(text)
            tmp.rename(vm.xdir / "pool.conf")

    def start(self, vm: Vm) -> int:
        env = {
            "PATH": f"{self.venv_bin}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
        }
        pid = vm.spawn(
            [str(self.venv_bin / "iscsi-ha"), "run", "--config", "/run/lab/iscsi-ha.yaml"],
            log="/run/lab/controller.log",
            env=env,
        )
        self.pids[vm.name] = pid
        return pid

    def cfg(self, vm: Vm, *args: str, timeout: float = 90.0) -> Result:
        """``iscsi-cfg`` inside the VM, as an operator on that host would run it."""
        return vm.run(
            [
                "env",
                f"PATH={self.venv_bin}:/usr/sbin:/usr/bin:/sbin:/bin",
                str(self.venv_bin / "iscsi-cfg"),
                "--config",
                "/run/lab/iscsi-ha.yaml",
                *args,
            ],
            timeout=timeout,
        )

    def stop(self, vm: Vm) -> None:
        pid = self.pids.pop(vm.name, None)
        if pid and vm.alive():
            try:
                vm.kill(pid)
            except VmError:
                pass

    # ---- reading a node -----------------------------------------------------------------------

    def metrics(self, vm: Vm) -> Dict[str, float]:
        """The exporter's samples as {'name{labels}': value}; {} when it does not answer."""
        fetch = (
            "import urllib.request as u; print(u.urlopen("
            f"'http://127.0.0.1:{EXPORTER_PORT}/metrics', timeout=5).read().decode())"
        )
        res = vm.run([self.lab.python, "-c", fetch], timeout=15)
        return parse_samples(res.out) if res.rc == 0 else {}

    def scrape(self, vm: Vm) -> Dict[str, float]:
        """The same samples, scraped over the LAN from the client's side as Prometheus would:
        no Python started inside the VM (seconds under TCG on a loaded machine)."""
        fetch = (
            "import urllib.request as u; print(u.urlopen("
            f"'http://{vm.lan_addr}:{EXPORTER_PORT}/metrics', timeout=5).read().decode())"
        )
        res = self.lab.client([sys.executable, "-c", fetch], timeout=15)
        return parse_samples(res.stdout) if res.returncode == 0 else {}

    def status(self, vm: Vm) -> str:
        try:
            return (vm.xdir / "state" / "status").read_text()
        except OSError:
            return ""

    def serving(self, vm: Vm) -> bool:
        """The target in that VM has our target (asked directly, not through the controller):
        tgtd's show, or LIO's configfs directory for our IQN with its TPG enabled."""
        if self.backend == "lio":
            res = vm.run(
                ["cat", f"/sys/kernel/config/target/iscsi/{IQN}/tpgt_1/enable"], timeout=10
            )
            return res.rc == 0 and res.out.strip() == "1"
        res = vm.run(
            ["tgtadm", "-C", str(vm.index), "--lld", "iscsi", "--mode", "target", "--op", "show"],
            timeout=10,
        )
        return res.rc == 0 and IQN in res.out

    def vip_local(self, vm: Vm) -> bool:
        res = vm.run(["ip", "-o", "addr", "show", "dev", vm.lan_if], timeout=10)
        return VIP.split("/")[0] + "/" in res.out

    def drbd(self, vm: Vm, cmd: str) -> str:
        return vm.run(["drbdadm", cmd, RES], timeout=20).out.strip()

    def controller_log(self, vm: Vm) -> str:
        try:
            return (vm.xdir / "controller.log").read_text()
        except OSError:
            return ""

    def settle(self, master: str, limit: float = 120.0) -> None:
        """Bring the pair to a known healthy state whatever an earlier test left: initial sync
        if never synced, the operator's split-brain recovery (the non-master discards its
        data) if StandAlone, then Connected, UpToDate on both and ``master`` serving."""
        self.set_pool_master(master)
        primary = self.lab.vm(master)
        other = next(vm for vm in self.lab.vms if vm is not primary)
        if all(self.drbd(vm, "dstate").startswith("Inconsistent") for vm in self.lab.vms):
            primary.run(["drbdadm", "primary", "--force", RES], timeout=30, check=True)
        if any(self.drbd(vm, "cstate") == "StandAlone" for vm in self.lab.vms):
            for vm in self.lab.vms:
                vm.run(["drbdadm", "disconnect", RES], timeout=30)
            wait_for(
                f"{other.name}'s controller to demote it",
                lambda: self.drbd(other, "role").startswith("Secondary/"),
                60,
            )
            other.run(["drbdadm", "connect", "--discard-my-data", RES], timeout=30, check=True)
            primary.run(["drbdadm", "connect", RES], timeout=30, check=True)
        wait_for(
            "both Connected and UpToDate",
            lambda: all(
                self.drbd(vm, "cstate") == "Connected"
                and self.drbd(vm, "dstate") == "UpToDate/UpToDate"
                for vm in self.lab.vms
            ),
            limit,
        )
        wait_for(
            f"{master} alone to serve at the VIP",
            lambda: (
                self.serving(primary)
                and not self.serving(other)
                and self.vip_local(primary)
                and self.client_inq() == 0
            ),
            limit,
        )

    # ---- the client ---------------------------------------------------------------------------

    def lun_url(self) -> str:
        return f"iscsi://{VIP.split('/')[0]}/{IQN}/1"

    def client_inq(self, timeout: float = 5.0) -> int:
        return self.lab.client(
            ["timeout", str(timeout), "iscsi-inq", self.lun_url()], timeout=timeout + 5
        ).returncode

    def _block(self, op: str, lba: int, arg: str, timeout: float) -> Dict[str, Any]:
        res = self.lab.client(
            [
                "timeout",
                str(timeout),
                sys.executable,
                str(BLOCK_TOOL),
                op,
                self.lun_url(),
                str(lba),
                arg,
            ],
            timeout=timeout + 5,
        )
        try:
            return json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"ok": False, "error": f"rc {res.returncode}: {res.stderr.strip()[-300:]!r}"}

    def client_identity(self, timeout: float = 10.0) -> Dict[str, Any]:
        """What a real initiator reads of the LUN's identity: VPD 0x80 and 0x83 as raw bytes
        (INQUIRY through libiscsi) and as libiscsi's iscsi-inq prints them."""
        out: Dict[str, Any] = {}
        for page in (128, 131):  # iscsi-inq -c takes decimal (0x80 reads as page 0)
            raw = self._block("vpd", 0, str(page), timeout)
            out[f"raw{page:#x}"] = raw.get("data") if raw.get("ok") else None
            inq = self.lab.client(
                ["timeout", str(timeout), "iscsi-inq", "-e", "1", "-c", str(page), self.lun_url()],
                timeout=timeout + 5,
            )
            out[f"inq{page:#x}"] = inq.stdout if inq.returncode == 0 else None
        return out

    def client_write(self, data: bytes, lba: int = 0, timeout: float = 20.0) -> Dict[str, Any]:
        return self._block("write", lba, data.hex(), timeout)

    def client_read(self, blocks: int, lba: int = 0, timeout: float = 20.0) -> Optional[bytes]:
        out = self._block("read", lba, str(blocks), timeout)
        return bytes.fromhex(out["data"]) if out.get("ok") else None


def parse_samples(text: str) -> Dict[str, float]:
    """The Prometheus text format as {'name{labels}': value}."""
    out: Dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def wait_for(what: str, predicate: Any, limit: float, interval: float = 0.5) -> Any:
    """Poll ``predicate`` until it returns something truthy; VmError naming ``what`` after
    ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise VmError(f"timed out after {limit:.0f} s waiting for {what}")
        time.sleep(interval)


def metric(samples: Dict[str, float], name: str, **labels: str) -> Optional[float]:
    """One sample by name and (a subset of) its labels."""
    for key, value in samples.items():
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(\{(.*)\})?", key)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return value
    return None


def one_hot(samples: Dict[str, float], name: str, label: str, **labels: str) -> List[str]:
    """The label values of a one-hot family that are 1 (e.g. the connection state)."""
    out = []
    for key, value in samples.items():
        if key.startswith(name + "{") and value == 1.0:
            have = dict(re.findall(r'(\w+)="([^"]*)"', key))
            if all(have.get(k) == v for k, v in labels.items()) and label in have:
                out.append(have[label])
    return out


class Sampler:
    """Which VMs serve the target, sampled in a thread for as long as a step runs (bounded by
    ``limit``): ``both`` holds every sample where more than one did."""

    def __init__(self, controllers: Controllers, period: float = 0.3, limit: float = 300.0):
        self.c, self.period, self.limit = controllers, period, limit
        self.samples = 0
        self.both: List[List[str]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.stopped.is_set() and time.monotonic() < deadline:
            serving = []
            for vm in self.c.lab.vms:
                try:
                    if vm.alive() and self.c.serving(vm):
                        serving.append(vm.name)
                except VmError:
                    pass  # a VM being killed or booting does not serve
            self.samples += 1
            if len(serving) > 1:
                self.both.append(serving)
            self.stopped.wait(self.period)

    def __enter__(self) -> "Sampler":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)
