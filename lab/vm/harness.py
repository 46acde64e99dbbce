"""Two QEMU VMs with the Debian kernel's real DRBD 8.4, a replication link and a client LAN.

Topology (``docs/design.md`` §12 B)::

    node1 VM  eth0 10.77.0.1 ==== -netdev dgram (UDP on 127.0.0.1) ==== eth0 10.77.0.2  node2 VM
              eth1 10.98.0.1 --tap1--+                          +--tap2-- eth1 10.98.0.2
                                     br0 10.98.0.10 (the client), VIP 10.98.0.3

Everything runs inside one network namespace per run (``vml<hex>``): the bridge, both taps, the
client's address (on the bridge itself) and both QEMU processes (so the dgram link's UDP never
leaves that namespace's loopback). The link is connectionless, so a killed VM can be started
again and the link simply carries packets again.

Each VM boots the image of ``image.py``: the host's root read-only over 9p, tmpfs over the
places programs write, and a per-VM writable 9p share (``<run>/<node>/x`` on the host,
``/run/lab`` in the VM) for configuration files, logs and the agent. The host talks to the
in-VM agent (``agent.py``) over a virtio-serial port (a Unix socket here): ``vm.run(argv)``
returns rc, stdout and stderr, with a timeout on both sides. QMP (another Unix socket) cuts and
restores the replication link (``set_link``) and quits QEMU. Consoles go to
``<run>/console-<node>.log`` (appended across restarts) and are kept after the run.

Lifetime: every QEMU is stopped by its PID (SIGTERM, bounded wait, SIGKILL); the namespace is
deleted at teardown. ``crash()`` is SIGKILL: nothing inside the VM gets to say goodbye.
"""

from __future__ import annotations

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import image as vmimage

HERE = Path(__file__).resolve().parent
AGENT = HERE / "agent.py"
REPL_NET = "10.77.0"
LAN_NET = "10.98.0"
CLIENT_ADDR = f"{LAN_NET}.10"
VIP = f"{LAN_NET}.3/24"
# Boot to the agent: 7-11 s on a quiet machine; a loaded one (load ~25 on 2 cores) needs minutes.
BOOT_TIMEOUT = float(os.environ.get("ISCSI_HA_VM_BOOT_TIMEOUT", "90"))
STOP_WAIT = 5.0
GLOBAL_COMMON = """global {
\tusage-count no;
}
common {
\tnet { protocol C; }
}
"""


class VmError(Exception):
    """Something in the VM lab failed; the message names the VM and what happened."""


@dataclass(frozen=True)
class Result:
    argv: Sequence[str]
    rc: int
    out: str
    err: str


def drbd_resource(name: str, minor: int, port: int, nodes: Sequence["Vm"], extra: str = "") -> str:
    """A resource section for the lab: fast failure detection and resync (docs/design.md §12 B)."""
    text = f"resource {name} {{\n"
    text += "\tnet { ping-int 1; ping-timeout 5; connect-int 1; }\n"
    text += "\tdisk { c-plan-ahead 0; resync-rate 100M; }\n" + extra
    for vm in nodes:
        text += (
            f"\ton {vm.name} {{ device /dev/drbd{minor}; disk /dev/vda; "
            f"address {vm.repl_addr}:{port}; meta-disk internal; }}\n"
        )
    return text + "}\n"


class Agent:
    """The host's end of one VM's agent socket: requests by id, answers by a reader thread."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        self.sock: Optional[socket.socket] = None
        self.lock = threading.Lock()
        self.next_id = 0
        self.pending: Dict[int, Dict[str, Any]] = {}
        self.closed = threading.Event()

    def connect(self, timeout: float, alive: Any = lambda: True) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not alive():
                raise VmError(f"{self.name}: QEMU is not running")
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(self.path))
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise VmError(f"{self.name}: agent socket {self.path} never appeared") from None
                time.sleep(0.05)
        self.sock = sock
        self.closed.clear()
        threading.Thread(target=self._reader, args=(sock,), daemon=True).start()

    def _reader(self, sock: socket.socket) -> None:
        buf = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue
                slot = self.pending.get(reply.get("id"))
                if slot is not None:
                    slot["reply"] = reply
                    slot["event"].set()
        self.closed.set()
        for slot in list(self.pending.values()):
            slot["event"].set()  # the VM went away: wake every waiter

    def request(self, req: Dict[str, Any], timeout: float) -> Dict[str, Any]:
        with self.lock:
            if self.sock is None or self.closed.is_set():
                raise VmError(f"{self.name}: agent not connected")
            self.next_id += 1
            req = dict(req, id=self.next_id)
            slot: Dict[str, Any] = {"event": threading.Event()}
            self.pending[req["id"]] = slot
            try:
                self.sock.sendall((json.dumps(req) + "\n").encode())
            except OSError as exc:
                self.pending.pop(req["id"], None)
                raise VmError(f"{self.name}: cannot send to the agent: {exc}") from None
        try:
            if not slot["event"].wait(timeout) or "reply" not in slot:
                why = "VM gone" if self.closed.is_set() else f"no answer in {timeout:.0f} s"
                raise VmError(f"{self.name}: agent request {req.get('argv') or req['op']}: {why}")
            return slot["reply"]
        finally:
            self.pending.pop(req["id"], None)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


class Vm:
    """One VM: its files, its QEMU process and the agent to run commands in it."""

    def __init__(self, lab: "VmLab", name: str, index: int) -> None:
        self.lab, self.name, self.index = lab, name, index
        self.dir = lab.dir / name
        self.xdir = self.dir / "x"  # the exchange share; /run/lab inside the VM
        self.disk = self.dir / "disk.img"
        self.console = lab.dir / f"console-{name}.log"
        self.qmp_path = self.dir / "qmp.sock"
        self.agent = Agent(self.dir / "agent.sock", name)
        self.proc: Optional[subprocess.Popen] = None
        self.repl_addr = f"{REPL_NET}.{index}"
        self.lan_addr = f"{LAN_NET}.{index}"
        self.tap = f"tap{index}"
        self.lan_if = "eth1"  # the guest's client-facing NIC (eth0 is the replication link)
        self.boots = 0

    def __repr__(self) -> str:
        return f"Vm({self.name})"

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def in_vm(self, host_path: Path) -> str:
        """Where a file of the exchange share appears inside the VM."""
        return "/run/lab/" + str(Path(host_path).relative_to(self.xdir))

    def qemu_argv(self) -> List[str]:
        img = self.lab.image
        other = 2 if self.index == 1 else 1
        base = self.lab.udp_base
        append = " ".join(
            [
                "console=ttyS0",
                "quiet",
                "panic=-1",
                f"lab.node={self.name}",
                f"lab.ip0={self.repl_addr}/24",
                f"lab.ip1={self.lan_addr}/24",
                f"lab.python={self.lab.python}",
                f"lab.keep={','.join(self.lab.keep) or '-'}",
            ]
        )
        return [
            "qemu-system-x86_64",
            "-name",
            self.name,
            "-M",
            "pc",
            "-accel",
            "tcg,tb-size=128",
            "-m",
            "512",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            str(img.kernel),
            "-initrd",
            str(img.initrd),
            "-append",
            append,
            "-chardev",
            f"file,id=con,path={self.console},append=on",
            "-serial",
            "chardev:con",
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs",
            f"local,path={self.xdir},mount_tag=exchange,security_model=none,multidevs=remap",
            "-drive",
            f"file={self.disk},if=virtio,format=raw,cache=writeback",
            "-netdev",
            f"dgram,id=repl,local.type=inet,local.host=127.0.0.1,"
            f"local.port={base + self.index},remote.type=inet,"
            f"remote.host=127.0.0.1,remote.port={base + other}",
            "-device",
            f"virtio-net-pci,netdev=repl,mac=52:54:00:77:00:0{self.index}",
            "-netdev",
            f"tap,id=lan,ifname={self.tap},script=no,downscript=no",
            "-device",
            f"virtio-net-pci,netdev=lan,mac=52:54:00:98:00:0{self.index}",
            "-device",
            "virtio-rng-pci",
            "-device",
            "virtio-serial-pci",
            "-chardev",
            f"socket,id=agent,path={self.agent.path},server=on,wait=off",
            "-device",
            "virtserialport,chardev=agent,name=agent",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
        ]

    # ---- lifetime -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start QEMU (returns at once; ``wait_ready()`` waits for the agent)."""
        if self.proc is not None and self.proc.poll() is None:
            raise VmError(f"{self.name}: already running (pid {self.proc.pid})")
        for sock in (self.qmp_path, self.agent.path):
            if sock.exists():
                sock.unlink()
        shutil.copy2(AGENT, self.xdir / "agent.py")
        with open(self.console, "a") as con:
            con.write(
                f"\n===== lab: boot {self.boots + 1} of {self.name} at "
                f"{time.strftime('%H:%M:%S')} =====\n"
            )
        log = open(self.dir / "qemu.log", "ab")
        try:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.lab.netns] + self.qemu_argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.boots += 1
        self.started_at = time.monotonic()

    def wait_ready(self, timeout: float = BOOT_TIMEOUT) -> float:
        """Wait until the agent answers; returns the boot time in seconds."""
        deadline = time.monotonic() + timeout
        self.agent.close()
        try:
            self.agent.connect(timeout, self.alive)
        except VmError:
            pass  # reported below with the console's path
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise VmError(
                    f"{self.name}: QEMU exited during boot (rc {self.proc.returncode}); "
                    f"see {self.console} and {self.dir / 'qemu.log'}"
                )
            try:
                self.agent.request({"op": "ping"}, timeout=2)
                return time.monotonic() - self.started_at
            except VmError:
                if time.monotonic() > deadline:
                    raise VmError(
                        f"{self.name}: no agent after {timeout:.0f} s; see {self.console}"
                    ) from None
                if self.agent.sock is None or self.agent.closed.is_set():
                    time.sleep(0.2)
                    try:
                        self.agent.connect(1.0, self.alive)
                    except VmError:
                        pass

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def crash(self) -> None:
        """Power cut: SIGKILL QEMU (the controller inside dies with it)."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_WAIT)
        self.agent.close()

    def stop(self) -> None:
        """QMP quit, then SIGTERM, then SIGKILL - each bounded."""
        if not self.alive():
            self.agent.close()
            return
        try:
            self.qmp("quit")
        except VmError:
            pass
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self.alive():
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=STOP_WAIT)
                break
            except subprocess.TimeoutExpired:
                continue
        self.agent.close()

    # ---- QMP ----------------------------------------------------------------------------------

    def qmp(self, command: str, **arguments: Any) -> Any:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(self.qmp_path))
                reader = sock.makefile("rb")
                json.loads(reader.readline())  # greeting
                sock.sendall(b'{"execute": "qmp_capabilities"}\n')
                self._qmp_reply(reader)
                msg: Dict[str, Any] = {"execute": command}
                if arguments:
                    msg["arguments"] = arguments
                sock.sendall((json.dumps(msg) + "\n").encode())
                return self._qmp_reply(reader)
        except (OSError, ValueError) as exc:
            raise VmError(f"{self.name}: QMP {command}: {exc}") from None

    def _qmp_reply(self, reader: Any) -> Any:
        for _ in range(100):  # skip asynchronous events
            line = reader.readline()
            if not line:
                raise VmError(f"{self.name}: QMP closed")
            msg = json.loads(line)
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise VmError(f"{self.name}: QMP error {msg['error']}")
        raise VmError(f"{self.name}: QMP sent no reply")

    def set_replication_link(self, up: bool) -> None:
        """Carrier of the replication NIC on (True) or off: packets stop both ways."""
        self.qmp("set_link", name="repl", up=bool(up))

    # ---- commands -----------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 30.0,
        input: Optional[str] = None,
        check: bool = False,
    ) -> Result:
        reply = self.agent.request(
            {"op": "run", "argv": list(argv), "timeout": timeout, "input": input},
            timeout=timeout + 10,
        )
        res = Result(
            tuple(argv), int(reply.get("rc", 255)), reply.get("out", ""), reply.get("err", "")
        )
        if check and res.rc != 0:
            raise VmError(
                f"{self.name}: `{' '.join(argv)}` -> rc {res.rc}: "
                f"{(res.err or res.out).strip()[-500:]!r}"
            )
        return res

    def sh(self, script: str, timeout: float = 30.0, check: bool = True) -> Result:
        return self.run(["/bin/sh", "-c", script], timeout=timeout, check=check)

    def spawn(
        self, argv: Sequence[str], log: str = "/dev/null", env: Optional[Dict[str, str]] = None
    ) -> int:
        reply = self.agent.request(
            {"op": "spawn", "argv": list(argv), "log": log, "env": env}, timeout=20
        )
        if not reply.get("pid"):
            raise VmError(f"{self.name}: cannot start {argv}: {reply.get('err')}")
        return int(reply["pid"])

    def kill(self, pid: int, sig: int = signal.SIGTERM) -> None:
        self.agent.request({"op": "kill", "pid": pid, "signal": int(sig)}, timeout=10)


def kept_paths(paths: List[str], hidden: Tuple[str, ...] = ("/tmp/", "/run/")) -> List[str]:
    """The paths under the VM's tmpfs mounts that must stay visible, none inside another."""
    wanted = sorted({p.rstrip("/") for p in paths if p.startswith(hidden)})
    return [p for p in wanted if not any(p.startswith(q + "/") for q in wanted if q != p)]


class VmLab:
    """Both VMs, the namespace with the client LAN, and the run directory (kept afterwards)."""

    def __init__(self, run_dir: Path, disk_mib: int = 64) -> None:
        self.dir = Path(run_dir)
        self.id = secrets.token_hex(3)
        self.netns = f"vml{self.id}"
        self.disk_mib = disk_mib
        self.image: Optional[vmimage.Image] = None
        self.udp_base = 40000
        self.python = sys.executable
        # A venv or a checkout under /tmp would be hidden by the VM's tmpfs on /tmp: /init binds
        # them back. The checkout matters too: an editable install imports from it (CI clones the
        # repository wherever it likes).
        self.keep = kept_paths([str(Path(sys.prefix)), str(Path(__file__).resolve().parents[2])])
        self.vms = [Vm(self, "node1", 1), Vm(self, "node2", 2)]
        self._netns_made = False

    def __enter__(self) -> "VmLab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def vm(self, name: str) -> Vm:
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise KeyError(name)

    def prepare(self, resources: Dict[str, str]) -> None:
        """Image, namespace, disks and DRBD configuration (``resources``: name -> .res text)."""
        self.image = vmimage.prepare()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._build_netns()
        for vm in self.vms:
            (vm.xdir / "drbd.d").mkdir(parents=True, exist_ok=True)
            with open(vm.disk, "wb") as f:
                f.truncate(self.disk_mib << 20)
            (vm.xdir / "drbd.d" / "global_common.conf").write_text(GLOBAL_COMMON)
            for name, text in resources.items():
                (vm.xdir / "drbd.d" / f"{name}.res").write_text(text)

    def boot(
        self, vms: Optional[Sequence[Vm]] = None, timeout: float = BOOT_TIMEOUT
    ) -> Dict[str, float]:
        """Start the VMs together and wait for their agents (each for ``timeout``); returns boot
        seconds per VM."""
        vms = list(vms or self.vms)
        for vm in vms:
            vm.start()
        return {vm.name: vm.wait_ready(timeout=timeout) for vm in vms}

    def _build_netns(self) -> None:
        ns = self.netns
        _ip(None, ["netns", "add", ns])
        self._netns_made = True
        cmds = [
            "link set lo up",
            "link add br0 type bridge",
            "link set br0 up",
            f"addr add {CLIENT_ADDR}/24 dev br0",
        ]
        for vm in self.vms:
            cmds += [
                f"tuntap add dev {vm.tap} mode tap",
                f"link set {vm.tap} master br0",
                f"link set {vm.tap} up",
            ]
        for cmd in cmds:
            _ip(ns, cmd.split())

    def client(self, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        """A command as the iSCSI client (the bridge's address, in the lab's namespace)."""
        # errors=surrogateescape: iscsi-inq prints binary designators raw; kept byte for byte.
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            errors="surrogateescape",
            timeout=timeout,
        )

    def teardown(self) -> None:
        for vm in self.vms:
            try:
                vm.stop()
            except Exception:  # noqa: BLE001 - keep tearing down the rest
                if vm.alive():
                    os.kill(vm.proc.pid, signal.SIGKILL)
        if self._netns_made:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=10)
            self._netns_made = False
        for vm in self.vms:
            if vm.disk.exists():
                vm.disk.unlink()  # 64 MiB each; consoles and logs stay

    def artefacts(self) -> List[Path]:
        """The files worth reading after a failure."""
        out = [vm.console for vm in self.vms]
        out += sorted(self.dir.glob("*.transcript*"))
        out += sorted(self.dir.glob("*/x/*.log"))
        return [p for p in out if p.exists()]


def _ip(ns: Optional[str], args: Sequence[str]) -> None:
    argv = ["ip"] + (["-n", ns] if ns else []) + list(args)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        raise VmError(f"{' '.join(argv)}: {res.stderr.strip()}")
