"""The two-node namespace lab: topology, per-node files, processes by PID, and a clean teardown.

Topology (``docs/design.md`` §12 A)::

    node1 (10.99.0.1, VIP 10.99.0.3) --eth0==v-node1--+
    node2 (10.99.0.2)                 --eth0==v-node2--+-- br0 (10.99.0.254) in "sw"
    client (10.99.0.10)               --eth0==v-client-+

Only the four namespace names are machine-wide, so they carry a per-run id
(``ihl<6 hex>-node1``...); the interfaces are created directly inside the run's namespaces and
never exist in the root namespace, so their short fixed names cannot collide with anything. All
traffic stays inside namespaces this lab created.

The bridge itself holds 10.99.0.254: a place for lab-wide services that must reach both nodes
(a Prometheus scraping both exporters can run in ``sw``).

Reaching the XenAPI fake: a controller inside ``node1`` cannot reach the root namespace's
127.0.0.1. The fake (``tests/xapi_fake.py``) runs as one root-namespace process and opens each
host's endpoint *inside that host's namespace* on the host's own address (``--netns``), so each
node's controller talks to ``http://<its own address>``, like a real host's local xapi; a slave's
login is answered ``HOST_IS_SLAVE <master address>``, a real address on the bridge. The harness
itself moves the master through the fake's control methods on a Unix socket endpoint
(``--unix``), which the root namespace can reach.

DRBD: ``lab.drbdsim`` stands in for the kernel module. Each node gets a ``bin/`` directory whose
``drbdadm``, ``drbdsetup`` (only ``events``, DRBD's state-change stream) and ``dmesg`` are
wrappers around the simulator with the node's identity; the controller config points
``drbd.drbdadm``/``drbd.drbdsetup``/``drbd.kernel_log`` at them and ``drbd.proc_drbd`` at the
node's generated ``/proc/drbd``. A ticker process keeps those files current. ``cut_link()``
downs the node's port on the bridge and tells the simulator, whose connection state follows.

Block data: each node has its OWN backing file per resource (``disk_path(resource, node)``), and
the simulator copies the data between them at the moments DRBD's protocol C guarantees it (a
connected Primary demotes, the connection ends, a resync finishes; see ``lab/drbdsim``). So a
block written through the VIP before a clean failover reads back after it, while a node promoted
on stale data -- or a target serving from a Secondary -- shows old blocks, as it would on real
DRBD. The simulator's "held open" check is real too (a tgtd of that node's namespace holding the
node's file), so ``drbdadm secondary`` under a serving target is refused as real DRBD refuses it.

The target is always **tgt** here (``target.backend: tgt``): the namespaces share this machine's
kernel, which has no configfs target, so the LIO backend runs only in the VM lab (``lab/vm/``).

Lifetime: everything started is recorded by PID and stopped by PID (SIGTERM, bounded wait,
SIGKILL), including whatever else runs inside the run's namespaces at teardown (the tgtd a
controller started), found with ``ip netns pids``. Teardown runs from the context manager, from
``atexit`` and from SIGTERM/SIGHUP, and a registry under ``/run/iscsi-ha-lab`` lets the next run
sweep the namespaces, processes and run directory of a run that was SIGKILLed.
"""

from __future__ import annotations

import atexit
import copy
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from .drbdsim import ENV_DIR, ENV_NODE, Cluster

REPO = Path(__file__).resolve().parent.parent
SIMULATOR = REPO / "lab" / "drbdsim" / "drbdadm.py"
BLOCK_TOOL = REPO / "lab" / "iscsi_block.py"
XAPI_FAKE = REPO / "tests" / "xapi_fake.py"
REGISTRY = Path("/run/iscsi-ha-lab")

SUBNET = "10.99.0"
PREFIXLEN = 24
VIP = f"{SUBNET}.3/{PREFIXLEN}"
CLIENT_ADDR = f"{SUBNET}.10"
SWITCH_ADDR = f"{SUBNET}.254"
IQN = "iqn.2024-01.org.iscsi-ha:lab"
NODE_IF = "eth0"  # the node's end of its veth, inside the node namespace
EXPORTER_PORT = 9856
XAPI_PORT = 80
XAPI_PASSWORD = "lab-secret"
STOP_WAIT = 3.0

Where = Union["Node", str, None]  # a node, a namespace name, or None for the root namespace


class LabError(Exception):
    pass


@dataclass(frozen=True)
class ProbeResult:
    rc: int
    seconds: float
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


def _deep_merge(base: Dict[str, Any], extra: Mapping[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Node:
    """One node: its namespace, address, and the files and ports its controller uses."""

    def __init__(self, lab: "Lab", name: str, index: int, tgt_port: int) -> None:
        self.lab = lab
        self.name = name
        self.index = index
        self.addr = f"{SUBNET}.{index}"
        self.netns = f"{lab.prefix}-{name}"
        self.dir = lab.base / name
        self.tgt_port = tgt_port
        self.interface = NODE_IF
        self.switch_port = f"v-{name}"  # its port on br0, in the sw namespace

    def __repr__(self) -> str:
        return f"Node({self.name}, {self.addr}, netns={self.netns})"

    # Paths ------------------------------------------------------------------------------------
    @property
    def pool_conf(self) -> Path:
        return self.dir / "pool.conf"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def status_file(self) -> Path:
        return self.state_dir / "status"

    @property
    def control_socket(self) -> Path:
        return self.dir / "control.sock"

    @property
    def bin_dir(self) -> Path:
        return self.dir / "bin"

    @property
    def config_path(self) -> Path:
        return self.dir / "iscsi-ha.yaml"

    @property
    def password_file(self) -> Path:
        return self.dir / "xapi-password"

    @property
    def proc_drbd(self) -> Path:
        return Path(self.lab.drbd.proc_drbd_path(self.name))

    @property
    def kernel_log(self) -> Path:
        return Path(self.lab.drbd.kernel_log_path(self.name))

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def xapi_url(self) -> str:
        port = self.lab.xapi_port
        return f"http://{self.addr}" + ("" if port == 80 else f":{port}")

    @property
    def exporter_listen(self) -> str:
        return f"{self.addr}:{EXPORTER_PORT}"

    # Environment and configuration -----------------------------------------------------------
    def env(self) -> Dict[str, str]:
        """What a process on this node runs with: the simulator's drbdadm first on PATH."""
        path = os.pathsep.join(
            [str(self.bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
        )
        return {"PATH": path, ENV_DIR: self.lab.drbd.dir, ENV_NODE: self.name}

    def config(self, extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        lab = self.lab
        cfg: Dict[str, Any] = {
            "node_name": self.name,
            "interval": 1,
            "command_timeout": 5,
            "resources": list(lab.resources),
            "drbd": {
                "version": "8.4",
                "drbdadm": str(self.bin_dir / "drbdadm"),
                "drbdsetup": str(self.bin_dir / "drbdsetup"),
                "proc_drbd": str(self.proc_drbd),
                "kernel_log": [str(self.bin_dir / "dmesg")],
            },
            "pool": {"conf": str(self.pool_conf)},
            "xenapi": {
                "enabled": True,
                "url": self.xapi_url,
                "username": "root",
                "password_file": str(self.password_file),
                "timeout": 5,
            },
            "target": {
                "backend": "tgt",  # namespaces share one kernel: no LIO here (VM lab has it)
                "control_port": self.tgt_port,
                "tid": 1,
                "iqn": lab.iqn,
                "luns": [
                    {"lun": i + 1, "path": str(lab.disk_path(r, self))}
                    for i, r in enumerate(lab.resources)
                ],
                "stop_timeout": 2,
                "log_file": str(self.log_dir / "tgtd.log"),
            },
            "vip": {"address": VIP, "interface": self.interface, "announce_interval": 10},
            # The simulator has no `drbdsetup show` / `drbdadm dump`: the data-safety audit is
            # checked on real DRBD 8.4 captures (tests/test_audit.py) and runs on real DRBD 8.4
            # kernels in the VM lab (tests/test_vm_probe.py).
            "audit": {"enabled": False},
            "paths": {
                "state_dir": str(self.state_dir),
                "status_file": str(self.status_file),
                "control_socket": str(self.control_socket),
            },
            "exporter": {"enabled": True, "listen": self.exporter_listen},
            "logging": {"level": "info", "syslog": False},
        }
        return _deep_merge(cfg, extra or {})

    def write_config(self, extra: Optional[Mapping[str, Any]] = None) -> Path:
        """Write this node's controller YAML (``extra`` is merged in, key by key) and return it."""
        import yaml  # PyYAML is a dependency of the product; imported late so the rest runs without

        _write_atomic(self.config_path, yaml.safe_dump(self.config(extra), sort_keys=False))
        return self.config_path

    def controller_argv(self, *args: str) -> List[str]:
        """The hook where the controller starts: ``iscsi-ha run --config FILE``, from this
        virtualenv, or from an unpacked RPM payload when ISCSI_HA_PAYLOAD names one."""
        from lab.payload import PREFIX, payload_argv, payload_root

        argv = ["run", "--config", str(self.config_path), *args]
        root = payload_root()
        if root is not None:
            return payload_argv(root, [f"{PREFIX}/bin/iscsi-ha", *argv])
        return [str(Path(sys.executable).parent / "iscsi-ha"), *argv]

    def drbdadm(self, *args: str) -> subprocess.CompletedProcess:
        """Run the simulator's drbdadm as this node (from the root namespace: it needs no net)."""
        return subprocess.run(
            [str(self.bin_dir / "drbdadm"), *args], capture_output=True, text=True, timeout=10
        )


class Lab:
    """The whole lab. Use as a context manager; ``start()`` builds, ``teardown()`` removes."""

    def __init__(
        self,
        base_dir: Optional[Union[str, Path]] = None,
        resources: Sequence[str] = ("iscsi1",),
        tgt_ports: Sequence[int] = (1, 2),
        resync_seconds: float = 2.0,
        drbd_initial: str = "synced",
        disk_mb: int = 16,
        iqn: str = IQN,
        xapi_port: int = XAPI_PORT,
        keep_dir: bool = False,
        prefix: str = "ihl",
        teardown_wait: float = 0.5,
    ) -> None:
        self.id = secrets.token_hex(3)
        self.prefix = f"{prefix}{self.id}"
        self.base = Path(base_dir) if base_dir else Path(f"/tmp/iscsi-ha-lab-{self.id}")
        self.resources = tuple(resources)
        self.iqn = iqn
        self.xapi_port = xapi_port
        self.keep_dir = keep_dir
        self.teardown_wait = teardown_wait
        self.disk_mb = disk_mb
        self.resync_seconds = resync_seconds
        self.drbd_initial = drbd_initial
        self.sw = f"{self.prefix}-sw"
        self.client = f"{self.prefix}-client"
        self.node1 = Node(self, "node1", 1, tgt_ports[0])
        self.node2 = Node(self, "node2", 2, tgt_ports[1])
        self.nodes = (self.node1, self.node2)
        self.namespaces = (self.sw, self.node1.netns, self.node2.netns, self.client)
        self.drbd = Cluster(str(self.base / "drbd"))
        self.processes: Dict[int, subprocess.Popen] = {}
        self.timings: Dict[str, float] = {}
        self.xapi_pid: Optional[int] = None
        self._links: Dict[str, bool] = {}
        self._management_cut = False
        self._stranger = False
        self.mounts: List[Path] = []
        self._where: Dict[int, Optional[str]] = {}  # pid -> namespace (None: root)
        self._lock = threading.RLock()
        self._started = False
        self._torn_down = False
        self._old_handlers: Dict[int, Any] = {}
        for port in tgt_ports:
            if not 0 <= int(port) <= 32767:  # tgtd rejects larger -C values
                raise LabError(f"tgtd control port {port} is out of range (0..32767)")
        for node in self.nodes:
            if len(str(node.control_socket)) >= 108:
                raise LabError(f"{node.control_socket}: too long for a Unix socket path")

    # ---- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> "Lab":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"no node {name!r}")

    def start(self, ticker: bool = True, pool_master: Optional[str] = "node1") -> "Lab":
        """Build the topology and the per-node files; start the DRBD simulator's ticker."""
        sweep_stale()
        self._install_cleanup()
        self._started = True
        t0 = time.monotonic()
        try:
            self._register()
            self._build_network()
            self.timings["network"] = time.monotonic() - t0
            self._build_files()
            if pool_master:
                self.set_pool_master(self.node(pool_master))
            if ticker:
                self.start_process(
                    None,
                    [
                        sys.executable,
                        "-S",
                        str(SIMULATOR),
                        "--sim-dir",
                        self.drbd.dir,
                        "--sim-kernel",
                        "--interval=0.1",
                        "--max-seconds=86400",
                    ],
                    log=self.base / "drbdsim-kernel.log",
                )
        except BaseException:
            self.teardown()
            raise
        self.timings["start"] = time.monotonic() - t0
        return self

    def teardown(self) -> None:
        """Stop every process by PID, delete the namespaces, remove the run directory. Idempotent;
        keeps going past errors so that one failure does not leave the rest behind."""
        with self._lock:
            if self._torn_down or not self._started:
                self._restore_handlers()
                return
            self._torn_down = True
        t0 = time.monotonic()
        try:
            # Short: a controller stops on SIGTERM at once; tgtd never does (it ignores SIGTERM).
            self.stop_all(timeout=self.teardown_wait)
        except Exception:  # noqa: BLE001 - teardown must go on
            pass
        # Whatever else runs in the run's namespaces (the tgtd a controller started, an arping):
        # found by namespace, stopped by PID; tgtd ignores SIGTERM, so the wait is short.
        kill_namespace_processes(self.namespaces, wait=0.2)
        delete_namespaces(self.namespaces)
        unmount(self.mounts)
        try:
            (REGISTRY / self.id).unlink()
        except OSError:
            pass
        if not self.keep_dir:
            shutil.rmtree(self.base, ignore_errors=True)
        self._restore_handlers()
        self.timings["teardown"] = time.monotonic() - t0

    def _install_cleanup(self) -> None:
        atexit.register(self.teardown)
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.teardown()
        previous = self._old_handlers.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _restore_handlers(self) -> None:
        try:
            atexit.unregister(self.teardown)
        except Exception:  # noqa: BLE001
            pass
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._old_handlers.items():
                if signal.getsignal(sig) == self._on_signal:
                    signal.signal(sig, handler)
        self._old_handlers.clear()

    def _register(self) -> None:
        """Record what a later run must sweep if this one is SIGKILLed: the namespaces, the run
        directory, and the processes started in the root namespace (``ip netns pids`` cannot
        find those)."""
        REGISTRY.mkdir(parents=True, exist_ok=True)
        root_pids = [pid for pid, ns in self._where.items() if ns is None]
        entry = {
            "pid": os.getpid(),
            "namespaces": list(self.namespaces),
            "base": str(self.base),
            "root_pids": root_pids,
            "mounts": [str(m) for m in self.mounts],
        }
        _write_atomic(REGISTRY / self.id, json.dumps(entry) + "\n")

    def _build_network(self) -> None:
        # 1) the namespaces and the veth pairs, each end created directly in its namespace.
        root = [f"netns add {ns}" for ns in self.namespaces]
        ends = [(n.switch_port, n.netns) for n in self.nodes] + [("v-client", self.client)]
        for i, (port, ns) in enumerate(ends):
            # Distinct ifindexes on the two ends: in fresh namespaces both would be 2, and a veth
            # whose peer has its own ifindex is not "urgent" to the kernel's linkwatch, which then
            # delays its carrier (and the bridge port's forwarding state) by up to a second.
            root.append(
                f"link add {port} index {11 + i} netns {self.sw} type veth "
                f"peer name {NODE_IF} index {21 + i} netns {ns}"
            )
        _ip_batch(None, root)
        # 2) inside: the bridge, the addresses, links up (one ip process per namespace, parallel).
        sw = [
            "link set lo up",
            "link add br0 type bridge",
            "link set br0 up",
            f"addr add {SWITCH_ADDR}/{PREFIXLEN} dev br0",
        ]
        for port, _ in ends:
            sw += [f"link set {port} master br0", f"link set {port} up"]
        jobs = [(self.sw, sw)]
        for ns, addr in [(n.netns, n.addr) for n in self.nodes] + [(self.client, CLIENT_ADDR)]:
            jobs.append(
                (
                    ns,
                    [
                        "link set lo up",
                        f"addr add {addr}/{PREFIXLEN} dev {NODE_IF}",
                        f"link set {NODE_IF} up",
                    ],
                )
            )
        procs = [_ip_batch_start(ns, cmds) for ns, cmds in jobs]
        for proc, (ns, _) in zip(procs, jobs):
            _ip_batch_wait(proc, ns)
        self.wait_forwarding()

    def wait_forwarding(self, timeout: float = 2.0) -> None:
        """Until every port of br0 forwards (carrier is asynchronous), bounded."""
        deadline = time.monotonic() + timeout
        while True:
            res = subprocess.run(
                ["bridge", "-n", self.sw, "-j", "link", "show"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            try:
                ports = {p["ifname"]: p.get("state") for p in json.loads(res.stdout or "[]")}
            except (ValueError, KeyError, TypeError):
                ports = {}
            cut = {n.switch_port for n in self.nodes if not self.drbd_link_up(n)}
            waiting = [name for name, state in ports.items() if state != "forwarding"]
            if len(ports) == 3 and set(waiting) <= cut:
                return
            if time.monotonic() > deadline:
                raise LabError(f"bridge ports not forwarding after {timeout}s: {ports}")
            time.sleep(0.005)

    def _build_files(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "disks").mkdir(exist_ok=True)
        for res in self.resources:
            for node in self.nodes:
                with open(self.disk_path(res, node), "wb") as f:
                    f.truncate(self.disk_mb * 1024 * 1024)
        Cluster.create(
            self.drbd.dir,
            {n.name: {"addr": n.addr, "netns": n.netns} for n in self.nodes},
            {
                r: {
                    "size_kb": self.disk_mb * 1024 - 40,
                    "disks": {n.name: str(self.disk_path(r, n)) for n in self.nodes},
                }
                for r in self.resources
            },
            initial=self.drbd_initial,
            resync_seconds=self.resync_seconds,
        )
        for node in self.nodes:
            for d in (node.dir, node.state_dir, node.bin_dir, node.log_dir):
                d.mkdir(parents=True, exist_ok=True)
            node.password_file.write_text(XAPI_PASSWORD + "\n")
            os.chmod(node.password_file, 0o600)
            ident = f"--sim-dir '{self.drbd.dir}' --sim-node {node.name}"
            compiled = self.compiled_simulator()
            for tool, extra in (
                ("drbdadm", ""),
                ("dmesg", " --sim-dmesg"),
                ("drbdsetup", " --sim-drbdsetup"),
            ):
                wrapper = node.bin_dir / tool
                wrapper.write_text(
                    "#!/bin/sh\n# lab: the DRBD simulator as this node\n"
                    # -S: the simulator is stdlib only; skipping site saves ~40 ms a call.
                    f"exec '{sys.executable}' -S '{compiled}' {ident}{extra} \"$@\"\n"
                )
                wrapper.chmod(0o755)

    def compiled_simulator(self) -> Path:
        """The simulator compiled once per run: a script given as ``.py`` is compiled again on
        every call (~60 ms of its ~80 on a busy 2-core machine), and the lab calls it for every
        ``drbdadm`` the controller runs, so this is what makes it answer about as fast as real
        DRBD. Python runs a ``.pyc`` file directly."""
        import py_compile

        target = self.base / "drbdsim.pyc"
        if not target.exists():
            py_compile.compile(str(SIMULATOR), cfile=str(target), doraise=True)
        return target

    def disk_path(self, resource: str, node: Optional["Node"] = None) -> Path:
        """``node``'s own backing file of ``resource`` (what its tgtd exports). Without a node:
        node1's, for a tool that knows one path for both hosts (bench/bench_switch.py's rivals
        export it from either node, as before the files were per node)."""
        return self.base / "disks" / f"{(node or self.node1).name}-{resource}.img"

    # ---- processes --------------------------------------------------------------------------

    def _netns(self, where: Where) -> Optional[str]:
        if isinstance(where, Node):
            return where.netns
        if where in ("client", "sw"):
            return self.client if where == "client" else self.sw
        return where  # a namespace name, or None for the root namespace

    def start_process(
        self,
        where: Where,
        argv: Sequence[str],
        env: Optional[Mapping[str, str]] = None,
        log: Optional[Union[str, Path]] = None,
    ) -> int:
        """Start ``argv`` inside ``where`` (a node, "client", "sw", a namespace or None); return
        its PID. ``ip netns exec`` execs in place, so the PID is the process itself."""
        ns = self._netns(where)
        full = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in argv]
        merged = dict(os.environ)
        if isinstance(where, Node):
            merged.update(where.env())
        merged.update(env or {})
        if log is None:
            log_dir = where.log_dir if isinstance(where, Node) else self.base / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            log = log_dir / f"{Path(str(argv[0])).name}-{len(self.processes)}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=merged,
                start_new_session=True,
            )
        self.processes[proc.pid] = proc
        self._where[proc.pid] = ns
        if ns is None:
            self._register()
        return proc.pid

    def start_controller(self, node: Node, *args: str) -> int:
        """Write the node's config if missing and start its controller; return the PID."""
        if not node.config_path.exists():
            node.write_config()
        return self.start_process(
            node, node.controller_argv(*args), log=node.log_dir / "controller.log"
        )

    def stop_process(self, pid: int, timeout: float = STOP_WAIT) -> Optional[int]:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code (None if it was
        not started here)."""
        proc = self.processes.pop(pid, None)
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        return proc.returncode

    def stop_all(self, timeout: float = STOP_WAIT) -> None:
        """stop_process() for every process started here, in parallel: one bounded wait."""
        procs = [self.processes.pop(pid) for pid in list(self.processes)]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.01)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)

    def kill_process(self, pid: int) -> Optional[int]:
        """SIGKILL at once (a crash, as in "the controller SIGKILLed during a promotion")."""
        proc = self.processes.pop(pid, None)
        if proc is None:
            return None
        proc.kill()
        proc.wait(timeout=5)
        return proc.returncode

    def run(
        self, where: Where, argv: Sequence[str], timeout: float = 10.0, check: bool = False
    ) -> subprocess.CompletedProcess:
        """Run a short command inside ``where`` and wait for it (bounded)."""
        ns = self._netns(where)
        full = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in argv]
        env = dict(os.environ)
        if isinstance(where, Node):
            env.update(where.env())
        res = subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=env)
        if check and res.returncode != 0:
            raise LabError(f"{' '.join(full)} failed (rc {res.returncode}): {res.stderr.strip()}")
        return res

    # ---- faults -----------------------------------------------------------------------------

    def cut_link(self, node: Node) -> None:
        """Partition ``node``: its port on the bridge goes down; the simulator follows."""
        _ip(self.sw, ["link", "set", node.switch_port, "down"])
        self._links[node.name] = False
        self.drbd.set_link(node.name, False)

    def restore_link(self, node: Node) -> None:
        _ip(self.sw, ["link", "set", node.switch_port, "up"])
        self._links[node.name] = True
        self.wait_forwarding()
        self.drbd.set_link(node.name, True)

    def drbd_link_up(self, node: Node) -> bool:
        return self._links.get(node.name, True)

    def cut_management(self) -> None:
        """The management network between the two nodes goes (the peer channel and the other
        host's xapi become unreachable) while the replication link -- the simulator's -- and the
        client's path to the VIP stay up: each node routes the other's address to a blackhole."""
        for node in self.nodes:
            peer = self.node2 if node is self.node1 else self.node1
            _ip(node.netns, ["route", "replace", "blackhole", f"{peer.addr}/32"])
        self._management_cut = True

    def restore_management(self) -> None:
        for node in self.nodes:
            peer = self.node2 if node is self.node1 else self.node1
            subprocess.run(
                ["ip", "-n", node.netns, "route", "del", "blackhole", f"{peer.addr}/32"],
                capture_output=True,
                timeout=10,
            )
        self._management_cut = False

    def management_cut(self) -> bool:
        return self._management_cut

    def stranger_takes_vip(self) -> None:
        """A third host on the segment (the switch namespace's own interface) binds the VIP and
        announces it, as a misconfigured machine would."""
        _ip(self.sw, ["addr", "replace", VIP, "dev", "br0"])
        self.start_process("sw", ["arping", "-U", "-c", "1", "-I", "br0", self.vip])
        self._stranger = True

    def stranger_releases_vip(self) -> None:
        subprocess.run(
            ["ip", "-n", self.sw, "addr", "del", VIP, "dev", "br0"], capture_output=True, timeout=10
        )
        self._stranger = False

    def stranger_has_vip(self) -> bool:
        return self._stranger

    def mount_tmpfs(self, path: Path, size_kb: int) -> None:
        """A small tmpfs at ``path`` (a node's state directory: it can then be filled or made
        read-only). Mounted before the node's controller starts, so the controller's mount
        namespace (``ip netns exec`` makes one) has it; unmounted at teardown."""
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0700", "tmpfs", str(path)],
            check=True,
            capture_output=True,
            timeout=10,
        )
        self.mounts.append(path)
        self._register()

    def remount(self, path: Path, writable: bool) -> None:
        """Read-only or read-write again: a remount changes the file system itself, so every
        mount namespace that has it sees the change."""
        subprocess.run(
            ["mount", "-o", f"remount,{'rw' if writable else 'ro'}", str(path)],
            check=True,
            capture_output=True,
            timeout=10,
        )

    # ---- the pool ---------------------------------------------------------------------------

    def set_pool_master(self, master: Node) -> None:
        """What HA-Lizard does on a master change: the new master's pool.conf says ``master``, the
        other's ``slave:<master address>``; the XenAPI fake (if running) moves its master too."""
        for node in self.nodes:
            text = "master" if node is master else f"slave:{master.addr}"
            _write_atomic(node.pool_conf, text)
        if self.xapi_pid is not None:
            self.xapi_control().fake.set_master(master.name)

    @property
    def xapi_socket(self) -> Path:
        return self.base / "xapi-control.sock"

    def start_xapi_fake(self, master: str = "node1") -> int:
        """Start ``tests/xapi_fake.py`` with each host's endpoint inside its node namespace."""
        if not XAPI_FAKE.exists():
            raise LabError(f"{XAPI_FAKE} is missing")
        argv = [
            sys.executable,
            str(XAPI_FAKE),
            "--listen",
            f"own:{self.xapi_port}",
            "--hosts",
            ",".join(f"{n.name}={n.addr}" for n in self.nodes),
            "--master",
            master,
            "--netns",
            ",".join(f"{n.name}={n.netns}" for n in self.nodes),
            "--unix",
            f"{master}={self.xapi_socket}",
            "--password-file",
            str(self.node1.password_file),
        ]
        log = self.base / "logs" / "xapi-fake.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        pid = self.start_process(None, argv, log=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = log.read_text() if log.exists() else ""
            if '"endpoints"' in text:
                self.xapi_pid = pid
                return pid
            if self.processes[pid].poll() is not None:
                break
            time.sleep(0.02)
        self.stop_process(pid)
        raise LabError(f"the XenAPI fake did not come up: {log.read_text()[-2000:]!r}")

    def xapi_control(self) -> Any:
        """An XML-RPC proxy on the fake's control socket (``fake.set_master`` etc.)."""
        return xmlrpc.client.ServerProxy(
            "http://xapi-fake/", transport=_UnixTransport(str(self.xapi_socket)), allow_none=True
        )

    # ---- the client -------------------------------------------------------------------------

    @property
    def vip(self) -> str:
        return VIP.split("/")[0]

    def lun_url(self, lun: int = 1) -> str:
        return f"iscsi://{self.vip}/{self.iqn}/{lun}"

    def client_probe(self, timeout: float = 2.0, lun: int = 1) -> ProbeResult:
        """``iscsi-inq`` through the VIP from the client namespace (libiscsi has no timeout of its
        own, hence timeout(1); rc 124 = it hung)."""
        t0 = time.monotonic()
        res = self.run(
            "client",
            ["timeout", str(timeout), "iscsi-inq", self.lun_url(lun)],
            timeout=timeout + 5,
        )
        return ProbeResult(res.returncode, time.monotonic() - t0, res.stdout, res.stderr)

    def client_write(self, data: bytes, lba: int = 0, lun: int = 1, timeout: float = 5.0) -> None:
        """Write whole 512-byte blocks through the VIP with libiscsi (lab/iscsi_block.py)."""
        out = self._block("write", lba, lun, timeout, data.hex())
        if not out.get("ok"):
            raise LabError(f"write through the VIP failed: {out.get('error')}")

    def client_read(
        self, lba: int = 0, blocks: int = 1, lun: int = 1, timeout: float = 5.0
    ) -> bytes:
        out = self._block("read", lba, lun, timeout, str(blocks))
        if not out.get("ok"):
            raise LabError(f"read through the VIP failed: {out.get('error')}")
        return bytes.fromhex(out["data"])

    def _block(self, op: str, lba: int, lun: int, timeout: float, arg: str) -> Dict[str, Any]:
        argv = [
            "timeout",
            str(timeout),
            sys.executable,
            str(BLOCK_TOOL),
            op,
            self.lun_url(lun),
            str(lba),
            arg,
        ]
        res = self.run("client", argv, timeout=timeout + 5)
        try:
            return json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"ok": False, "error": f"rc {res.returncode}: {res.stderr.strip()[-500:]!r}"}

    def ping(self, where: Where, addr: str, timeout: float = 1.0) -> bool:
        res = self.run(where, ["ping", "-c", "1", "-W", str(timeout), addr], timeout=timeout + 5)
        return res.returncode == 0


# --------------------------------------------------------------------------------------------
# ip(8) helpers
# --------------------------------------------------------------------------------------------


def _ip(ns: Optional[str], args: Sequence[str]) -> None:
    argv = ["ip"] + (["-n", ns] if ns else []) + list(args)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {res.stderr.strip()}")


def _ip_batch_start(ns: Optional[str], commands: Sequence[str]) -> subprocess.Popen:
    argv = ["ip"] + (["-n", ns] if ns else []) + ["-batch", "-"]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None
    # Written at once so that several ip processes work in parallel; their output is tiny.
    proc.stdin.write("\n".join(commands) + "\n")
    proc.stdin.close()
    return proc


def _ip_batch_wait(proc: subprocess.Popen, ns: Optional[str]) -> None:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise LabError(f"ip -batch in {ns or 'root'} timed out") from None
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    if proc.returncode != 0:
        raise LabError(f"ip -batch in {ns or 'root namespace'}: {err.strip()}")


def _ip_batch(ns: Optional[str], commands: Sequence[str]) -> None:
    _ip_batch_wait(_ip_batch_start(ns, commands), ns)


def existing_namespaces() -> List[str]:
    res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def kill_namespace_processes(namespaces: Sequence[str], wait: float = STOP_WAIT) -> None:
    """Stop, by PID, whatever still runs inside these namespaces (e.g. a tgtd a controller
    started): SIGTERM, a bounded wait, then SIGKILL (tgtd ignores SIGTERM)."""
    pids: List[int] = []
    for ns in namespaces:
        res = subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10
        )
        pids += [int(p) for p in res.stdout.split() if p.isdigit() and int(p) != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (wait if sig == signal.SIGTERM else 2.0)
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if _alive(p)]
            if alive:
                time.sleep(0.02)
        pids = alive
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        # A zombie child of ours is dead for this purpose; reap it if it is ours.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def delete_namespaces(namespaces: Sequence[str]) -> None:
    present = set(existing_namespaces())
    todo = [ns for ns in namespaces if ns in present]
    if todo:
        try:
            _ip_batch(None, [f"netns del {ns}" for ns in todo])
        except LabError:  # one that vanished meanwhile: delete the rest one by one
            for ns in todo:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def unmount(paths: Sequence[Path]) -> None:
    """Lazily: a process still inside would otherwise keep the mount (and its directory)."""
    for path in paths:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


def sweep_stale() -> List[str]:
    """Remove what runs left behind whose owning process is gone (a SIGKILLed test run)."""
    swept: List[str] = []
    if not REGISTRY.is_dir():
        return swept
    for entry in REGISTRY.iterdir():
        try:
            info = json.loads(entry.read_text())
            owner = int(info["pid"])
        except (OSError, ValueError, KeyError):
            continue
        if _alive(owner):
            continue
        namespaces = [str(ns) for ns in info.get("namespaces", [])]
        base = info.get("base")
        for pid in info.get("root_pids", []):
            # Only if it is still that run's process (its command line names the run directory).
            try:
                with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
                    mine = bool(base) and str(base).encode() in f.read()
                if mine:
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        kill_namespace_processes(namespaces)
        delete_namespaces(namespaces)
        unmount([Path(m) for m in info.get("mounts", []) if base and str(m).startswith(base)])
        if base and Path(base).name.startswith("iscsi-ha-lab-"):
            shutil.rmtree(base, ignore_errors=True)
        entry.unlink(missing_ok=True)
        swept += namespaces
    return swept


class _UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over a Unix socket (the fake's control endpoint, reachable from the root netns)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        path = self.path

        class Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(10)
                sock.connect(path)
                self.sock = sock

        return Conn("localhost", timeout=10)
