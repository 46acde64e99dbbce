"""The target and VIP adapters against the real tools: tgtd/tgtadm, iproute2, iputils arping and
libiscsi's client, in network namespaces (docs/design.md §12 A).

node1, node2 and client sit on one bridge (``tests/netns.py``, unique names per run). Each node runs
its own tgtd on a distinct, random control port, started by the adapter itself; every command of
the adapters runs inside its node's namespace through ``NetnsRunner`` (``ip netns exec NS ...``),
as it would run on that host. A client in the third namespace logs in with ``iscsi-inq`` through the
VIP, before and after the VIP moves.

Everything started here is stopped by PID: the adapters' own ``stop_daemon``, then a by-PID
SIGKILL of anything still running in the lab's namespaces when the lab is torn down.

Skipped only when not root or a tool is missing; on the project's lab machines it runs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List

import pytest
from iscsi_ha.controller.systems.tgt import Target, find_tgtd_pids, parse_show
from iscsi_ha.controller.systems.vip import Vip, parse_addr_show
from netns import NetnsLab, unavailable

BLOCK_TOOL = Path(__file__).resolve().parent.parent / "lab" / "iscsi_block.py"

IQN = "iqn.2024-01.org.iscsi-ha:storage"
VIP = "10.99.0.3/24"
VIP_IP = "10.99.0.3"
HOSTS = {"node1": "10.99.0.1/24", "node2": "10.99.0.2/24", "client": "10.99.0.10/24"}
SOCKET_DIR = Path("/var/run/tgtd")


def _why_skip() -> str:
    reason = unavailable("tgtd", "tgtadm", "arping", "iscsi-inq", "iscsi-perf", "timeout")
    if reason:
        return reason
    version = subprocess.run(["arping", "-V"], capture_output=True, text=True)
    if "iputils" not in version.stdout + version.stderr:
        return "arping is not iputils-arping (Habets' arping has other exit codes and no -D)"
    return ""


SKIP = _why_skip()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(bool(SKIP), reason=SKIP)]


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[NetnsLab]:
    with NetnsLab(HOSTS) as lab:
        yield lab


@pytest.fixture(scope="module")
def disks(tmp_path_factory) -> List[str]:
    """Sparse backing files: three for node LUNs and one spare to play a wrong backing store."""
    d = tmp_path_factory.mktemp("luns")
    paths = []
    for i, size in enumerate((64 << 20, 32 << 20, 16 << 20, 8 << 20)):
        p = d / f"disk{i}.img"
        with open(p, "wb") as f:
            f.truncate(size)
        paths.append(str(p))
    return paths


def _free_port(taken: List[int]) -> int:
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 32000)  # tgtadm accepts -C 0..32767
        if port in taken or (SOCKET_DIR / f"socket.{port}").exists() or find_tgtd_pids(port):
            continue
        return port
    raise RuntimeError("no free tgtd control port")


@pytest.fixture
def targets(lab, disks, tmp_path) -> Iterator[Callable[..., Target]]:
    """Make Target adapters on a node, each with its own control port; all stopped afterwards."""
    made: List[Target] = []

    def make(host: str, **kw) -> Target:
        kw.setdefault("luns", ((1, disks[0]),))
        kw.setdefault("stop_timeout", 3.0)
        kw.setdefault("log_file", str(tmp_path / f"tgtd-{host}-{len(made)}.log"))
        kw.setdefault("timeout", 10.0)
        port = _free_port([t.control_port for t in made])
        t = Target(lab.runner(host), control_port=port, **kw)
        made.append(t)
        return t

    yield make
    for t in made:
        try:
            t.stop_daemon()
        finally:
            for pid in find_tgtd_pids(t.control_port):  # only if stop_daemon failed
                os.kill(pid, signal.SIGKILL)
            for suffix in ("", ".lock"):  # tgtd leaves its socket behind
                (SOCKET_DIR / f"socket.{t.control_port}{suffix}").unlink(missing_ok=True)


@pytest.fixture
def vips(lab) -> Iterator[Callable[[str], Vip]]:
    """Vip adapters on a node's eth0; afterwards their announcements are ended and the VIP is
    removed from every node (so no test hears the previous one's gratuitous ARP)."""
    made: List[Vip] = []

    def make(host: str, **kw) -> Vip:
        kw.setdefault("address", VIP)
        kw.setdefault("interface", "eth0")
        kw.setdefault("timeout", 10.0)
        made.append(Vip(lab.runner(host), **kw))
        return made[-1]

    yield make
    for vip in made:
        vip.stop_announcing()
    for host in HOSTS:
        for cidr in (VIP, "10.99.0.3/16"):
            lab.run(host, ["ip", "addr", "del", cidr, "dev", "eth0"], check=False)


def tgtadm(lab: NetnsLab, host: str, t: Target, *args: str) -> subprocess.CompletedProcess:
    """A tgtadm call made behind the adapter's back (to break things it must repair)."""
    return lab.run(host, ["tgtadm", "-C", str(t.control_port), "--lld", "iscsi", *args])


def tgtd_reads(pid: int) -> int:
    """Bytes a tgtd has read so far (/proc/PID/io rchar: backing store and sockets)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no rchar in /proc/{pid}/io")


def wait_for(check: Callable[[], bool], limit: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > limit:
            raise AssertionError(f"{what}: not within {limit}s")
        time.sleep(0.005)
    return time.monotonic() - start


def inquiry(lab: NetnsLab) -> subprocess.CompletedProcess:
    """The client asks the target behind the VIP for its identity (libiscsi has no timeout)."""
    argv = ["timeout", "-k", "1", "5", "iscsi-inq", f"iscsi://{VIP_IP}/{IQN}/1"]
    return lab.run("client", argv, timeout=10, check=False)


def vpd_pages(lab: NetnsLab) -> tuple:
    """The raw VPD pages 0x80 (unit serial) and 0x83 (device identification) behind the VIP."""
    pages = []
    for page in ("128", "131"):
        argv = [
            "timeout",
            "-k",
            "1",
            "5",
            sys.executable,
            str(BLOCK_TOOL),
            "vpd",
            f"iscsi://{VIP_IP}/{IQN}/1",
            "0",
            page,
        ]
        out = lab.run("client", argv, timeout=10, check=False)
        pages.append(json.loads(out.stdout.strip().splitlines()[-1]).get("data"))
    return tuple(pages)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# --------------------------------------------------------------------------------------------
# VIP
# --------------------------------------------------------------------------------------------


def test_vip_bind_observe_unbind(lab, vips):
    vip = vips("node1")
    assert not vip.observe().local
    res = vip.bind()
    assert res.ok and "bound" in res.message
    assert vip.observe().local
    # The adapter's reading agrees with ip's own output, read independently.
    assert parse_addr_show(
        lab.run("node1", ["ip", "-o", "addr", "show", "dev", "eth0"]).stdout, VIP
    ).local
    again = vip.bind()
    assert again.ok and "already" in again.message
    assert not vips("node2").observe().local  # only where it was bound
    assert vip.unbind().ok
    assert not vip.observe().local
    gone = vip.unbind()
    assert gone.ok and "not on eth0" in gone.message


def test_vip_bound_with_another_prefix_is_local_and_unbind_removes_it(lab, vips):
    vip = vips("node1")
    lab.run("node1", ["ip", "addr", "add", "10.99.0.3/16", "dev", "eth0"])
    assert vip.observe().local
    res = vip.unbind()
    assert res.ok and "10.99.0.3/16" in res.message
    out = lab.run("node1", ["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert VIP_IP not in out


def test_vip_missing_interface(vips):
    vip = vips("node1", interface="xenbr0")
    obs = vip.observe()
    assert obs.error and 'Device "xenbr0" does not exist' in obs.error
    assert not vip.bind().ok
    assert vip.probe_conflict() is None


def test_probe_conflict(lab, vips):
    node1, node2 = vips("node1"), vips("node2")
    assert node2.probe_conflict() is False  # nobody holds it: the full count, ~2 s
    assert node1.bind().ok
    start = time.monotonic()
    assert node2.probe_conflict() is True  # node1 answers
    assert time.monotonic() - start < 1.5  # rc 1 at the first reply, not after the full count
    assert node1.probe_conflict() is False  # the holder alone: its kernel ignores its own probe
    # A third host takes the address: the holder itself sees it (the probe works on both sides).
    lab.run("node2", ["ip", "addr", "add", VIP, "dev", "eth0"])
    assert node1.probe_conflict() is True


def test_probe_is_not_fooled_by_the_announcements_of_a_host_that_let_go(lab, vips):
    node1, node2 = vips("node1"), vips("node2")
    # A host that let the VIP go while an announcement still runs there (an older iscsi-ha, or
    # another tool): arping -U goes on for ~2 s with the VIP as its sender address.
    stray = lab.runner("node1").spawn(["arping", "-U", "-I", "eth0", "-c", "3", VIP_IP], 6)
    assert stray is not None
    try:
        # A bare `arping -D` exits 1 on node1's announcement here; the adapter probes again.
        assert node2.probe_conflict() is False
    finally:
        stray.stop()
    # Holding and announcing at once: the kernel's reply comes first, a conflict at once.
    assert node1.bind().ok and node1.announce().ok
    start = time.monotonic()
    assert node2.probe_conflict() is True
    assert time.monotonic() - start < 1.5


def test_announce_updates_the_clients_arp_cache(lab, vips):
    node1, node2 = vips("node1"), vips("node2")
    assert node1.bind().ok
    lab.run("client", ["ping", "-c", "1", "-W", "2", VIP_IP])
    assert lab.neighbour("client", VIP_IP) == lab.mac("node1")
    assert node1.unbind().ok and node2.bind().ok
    assert lab.neighbour("client", VIP_IP) == lab.mac("node1")  # stale until announced
    res = node2.announce()
    assert res.ok
    node2_mac = lab.mac("node2")
    wait_for(lambda: lab.neighbour("client", VIP_IP) == node2_mac, 2.0, "client ARP cache")


def test_a_host_that_lets_go_stops_announcing_so_clients_stay_with_the_new_holder(lab, vips):
    node1, node2 = vips("node1"), vips("node2")
    assert node1.bind().ok and node1.announce().ok  # arping -c 2: its second packet in ~1 s
    lab.run("client", ["ping", "-c", "1", "-W", "2", VIP_IP])
    assert node1.unbind().ok and node2.bind().ok and node2.announce().ok
    node2_mac = lab.mac("node2")
    wait_for(lambda: lab.neighbour("client", VIP_IP) == node2_mac, 2.0, "client ARP cache")
    # Past the moment node1's second announcement was due: the client still goes to node2.
    # (Before unbind() ended it, it switched back to node1 here: a failover within a second
    # of a bind cost the lab's client 640 ms instead of 120.)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert lab.neighbour("client", VIP_IP) == node2_mac
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------
# tgtd
# --------------------------------------------------------------------------------------------


def test_daemon_start_is_idempotent_and_stop_really_stops(lab, targets):
    t = targets("node1")
    assert not t.observe().daemon_running
    res = t.start_daemon()
    assert res.ok, res.message
    pid = t.pid
    assert pid and find_tgtd_pids(t.control_port) == (pid,)
    assert lab.ns["node1"] in lab.run("node1", ["ip", "netns", "identify", str(pid)]).stdout
    obs = t.observe()
    assert obs.daemon_running and not obs.target_present and obs.error is None
    again = t.start_daemon()
    assert again.ok and "already running" in again.message
    assert find_tgtd_pids(t.control_port) == (pid,)  # no second daemon

    # A fresh adapter (a restarted controller) finds the daemon's PID by its -C in /proc.
    fresh = Target(lab.runner("node1"), control_port=t.control_port, luns=t.luns, stop_timeout=3.0)
    assert fresh.serve().ok  # a target to delete on the way down
    start = time.monotonic()
    res = fresh.stop_daemon()
    took = time.monotonic() - start
    assert res.ok, res.message
    assert not alive(pid) and find_tgtd_pids(t.control_port) == ()
    assert took < 3.0, took  # `--mode system --op delete` works; no SIGKILL needed
    assert "killed" not in res.message
    assert not t.observe().daemon_running
    assert t.stop_daemon().ok  # already stopped


def test_stop_daemon_kills_by_pid_when_the_daemon_will_not_exit(lab, targets, disks):
    t = targets("node1", stop_timeout=0.3)
    assert t.start_daemon().ok
    pid = t.pid
    # A target that is not ours: tgtd refuses `--mode system --op delete` while it exists.
    tgtadm(
        lab,
        "node1",
        t,
        "--mode",
        "target",
        "--op",
        "new",
        "--tid",
        "9",
        "--targetname",
        "iqn.2024-01.org.example:foreign",
    )
    res = t.stop_daemon()
    assert res.ok, res.message
    assert f"killed (pid {pid})" in res.message and "invalid request" in res.message
    assert not alive(pid)
    assert not t.observe().daemon_running


def test_serve_is_idempotent_and_repairs(lab, targets, disks):
    t = targets("node1")
    assert t.start_daemon().ok
    start = time.monotonic()
    res = t.serve()
    took = time.monotonic() - start
    assert res.ok, res.message
    assert took < 1.0, took  # measured ~20 ms through `ip netns exec`
    obs = t.observe()
    assert obs.serving and obs.luns == 1 and obs.sessions == 0

    again = t.serve()
    assert again.ok and "already in place" in again.message

    # Wrong backing store behind our back: replaced.
    tgtadm(lab, "node1", t, "--mode", "logicalunit", "--op", "delete", "--tid", "1", "--lun", "1")
    tgtadm(
        lab,
        "node1",
        t,
        "--mode",
        "logicalunit",
        "--op",
        "new",
        "--tid",
        "1",
        "--lun",
        "1",
        "--backing-store",
        disks[3],
    )
    assert not t.observe().serving
    res = t.serve()
    assert res.ok and f"removed LUN 1 ({disks[3]})" in res.message
    show = tgtadm(lab, "node1", t, "--mode", "target", "--op", "show").stdout
    (tgt,) = parse_show(show)
    assert tgt.lun(1).path == disks[0]

    # Binding removed: only the binding is redone.
    tgtadm(
        lab,
        "node1",
        t,
        "--mode",
        "target",
        "--op",
        "unbind",
        "--tid",
        "1",
        "--initiator-address",
        "ALL",
    )
    assert not t.observe().serving
    res = t.serve()
    assert res.ok and res.message.endswith(": bound ALL")
    assert t.observe().serving

    # stop_serving twice: the second finds nothing and is still a success.
    assert t.stop_serving().ok
    obs = t.observe()
    assert obs.daemon_running and not obs.target_present
    assert "not present" in t.stop_serving().message


def test_serve_three_luns_and_a_missing_backing_store(lab, targets, disks):
    t = targets("node1", luns=((1, disks[0]), (2, disks[1]), (3, disks[2])))
    assert t.start_daemon().ok
    res = t.serve()
    assert res.ok, res.message
    assert t.observe().luns == 3 and t.observe().serving

    bad = Target(
        lab.runner("node1"),
        control_port=t.control_port,
        tid=2,
        iqn="iqn.2024-01.org.example:bad",
        luns=((1, "/nonexistent/drbd0"),),
    )
    res = bad.serve()
    assert not res.ok
    assert "/nonexistent/drbd0" in res.message and "invalid request" in res.message
    assert bad.stop_serving().ok


def test_sessions_are_counted_and_force_delete_waits_out_inflight_io(lab, targets):
    t = targets("node1")
    assert t.start_daemon().ok and t.serve().ok
    # iscsi-perf reads continuously; it ignores SIGTERM, so it is SIGKILLed by its PID below.
    perf = subprocess.Popen(
        lab.argv("client", ["iscsi-perf", f"iscsi://{lab.address('node1')}/{IQN}/1"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: t.observe().sessions == 1, 5.0, "a session on node1")
        # Commands in flight: tgtd is reading the backing store for the client, now.
        pid = find_tgtd_pids(t.control_port)[0]
        start = tgtd_reads(pid)
        wait_for(lambda: tgtd_reads(pid) - start >= 1 << 20, 5.0, "tgtd serving reads")
        res = t.stop_serving()
        assert res.ok, res.message
        assert not t.observe().target_present
    finally:
        perf.kill()
        perf.wait(timeout=5)


# --------------------------------------------------------------------------------------------
# the whole move
# --------------------------------------------------------------------------------------------


def test_client_follows_the_vip_from_node1_to_node2(lab, targets, vips, disks):
    t1, t2 = targets("node1"), targets("node2")
    v1, v2 = vips("node1"), vips("node2")
    assert t1.start_daemon().ok and t2.start_daemon().ok  # node2's waits empty (warm standby)
    assert t1.control_port != t2.control_port

    # node1 holds the storage.
    assert t1.serve().ok and v1.bind().ok and v1.announce().ok
    inq = inquiry(lab)
    assert inq.returncode == 0, inq.stderr
    assert "Vendor:ISCSI-HA" in inq.stdout and "Peripheral Device Type:DIRECT_ACCESS" in inq.stdout
    assert lab.neighbour("client", VIP_IP) == lab.mac("node1")
    identity = vpd_pages(lab)
    assert all(identity), identity
    # The NAA designator the client reads is the one the config derives (and LIO would present).
    assert t1.specs[0].wwn[len("naa.") :] in identity[1], identity

    # node2 sees that the VIP is taken.
    assert v2.probe_conflict() is True

    # Move: node1 lets go, node2 takes over.
    assert t1.stop_serving().ok and v1.unbind().ok
    # Nobody answers any more, though node1's announcement may still be on the wire (~2 s).
    assert v2.probe_conflict() is False
    assert t2.serve().ok and v2.bind().ok and v2.announce().ok
    node2_mac = lab.mac("node2")
    wait_for(lambda: lab.neighbour("client", VIP_IP) == node2_mac, 2.0, "client ARP cache")
    inq = inquiry(lab)
    assert inq.returncode == 0, inq.stderr
    assert "Vendor:ISCSI-HA" in inq.stdout
    assert vpd_pages(lab) == identity  # byte for byte: the SR finds its LUN again

    o1, o2 = t1.observe(), t2.observe()
    assert o1.daemon_running and not o1.target_present and not v1.observe().local
    assert o2.serving and v2.observe().local

    # Both daemons stop for real, within the bounded wait.
    pids = (t1.pid, t2.pid)
    for t in (t1, t2):
        assert t.stop_daemon().ok
    assert not any(alive(p) for p in pids)
    assert inquiry(lab).returncode != 0  # nobody serves now


def test_lab_leaves_nothing_behind():
    """A lab's namespaces and the processes in them are gone after close()."""
    with NetnsLab({"a": "10.98.0.1/24"}) as lab:
        proc = subprocess.Popen(lab.argv("a", ["sleep", "30"]))
        wait_for(lambda: lab.pids(lab.ns["a"]) != [], 2.0, "sleep in namespace")
        names = list(lab.ns.values())
    assert proc.wait(timeout=5) == -signal.SIGKILL
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed.split() for n in names)
    assert shutil.which("ip")


def test_import_conf_identity_is_what_tgt_admin_really_presents(lab, targets, disks, tmp_path):
    """``import-conf --tgt-conf`` pins each LUN's identity as tgt presented it under the original
    tool: the real tgt-admin loads the same targets.conf, and tgt's own show must agree."""
    from iscsi_ha.controller.systems.tgt import parse_targets_conf

    fixture = Path(__file__).parent / "fixtures" / "tgt" / "targets.conf"
    text = fixture.read_text()
    for i, dev in enumerate(
        (
            "/dev/drbd/by-res/iscsi1/0",
            "/dev/drbd/by-res/iscsi2/0",
            "/dev/drbd/by-res/iscsi3/0",
            "/srv/scratch.img",
        )
    ):
        text = text.replace(dev, disks[i])
    conf = tmp_path / "targets.conf"
    conf.write_text(text)
    t = targets("node1")
    assert t.start_daemon().ok
    res = lab.runner("node1").run(
        ["tgt-admin", "-C", str(t.control_port), "-e", "-c", str(conf)], timeout=30
    )
    assert res.ok, res.describe_failure()
    shown = {
        tgt.name: tgt
        for tgt in parse_show(
            lab.runner("node1")
            .run(
                [
                    "tgtadm",
                    "-C",
                    str(t.control_port),
                    "--lld",
                    "iscsi",
                    "--mode",
                    "target",
                    "--op",
                    "show",
                ],
                timeout=10,
            )
            .stdout
        )
    }
    for conf_target in parse_targets_conf(text):
        real = shown[conf_target.iqn]
        assert real.tid == conf_target.tid
        assert [(lun.number, lun.path, lun.scsi_id, lun.scsi_sn) for lun in real.data_luns] == [
            (lun.number, lun.path, lun.scsi_id, lun.scsi_sn) for lun in conf_target.luns
        ]
    for tid in (1, 2):
        lab.runner("node1").run(
            [
                "tgtadm",
                "-C",
                str(t.control_port),
                "--lld",
                "iscsi",
                "--mode",
                "target",
                "--op",
                "delete",
                "--force",
                "--tid",
                str(tid),
            ],
            timeout=10,
        )
