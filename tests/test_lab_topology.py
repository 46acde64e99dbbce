"""The namespace lab itself: topology, link cuts, teardown, the data path through the VIP.

Real namespaces, veths, a bridge, ping, tgtd, arping and libiscsi; the DRBD simulator in between.
No controller here (its tests come with it): where the controller would act, the tests run its
steps by hand, which also shows what the lab offers it. Names are unique per run; every lab is torn
down in the test, and the teardown tests check that nothing is left behind.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # lab/ is not installed; it is imported from the repository root
    sys.path.append(str(REPO))

from lab import netlab  # noqa: E402
from lab.netlab import Lab, LabError, existing_namespaces  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def tgt_ports():
    # The tgtd control socket (/var/run/tgtd/socket.N) is machine-wide: keep runs apart.
    base = random.randrange(1000, 32000, 2)  # tgtd accepts -C up to 32767
    return (base, base + 1)


def leftovers(lab: Lab) -> list:
    return [ns for ns in existing_namespaces() if ns.startswith(lab.prefix)]


def test_topology_ping_cut_restore_and_teardown():
    t0 = time.monotonic()
    lab = Lab(tgt_ports=tgt_ports())
    with lab:
        built = time.monotonic() - t0
        assert sorted(leftovers(lab)) == sorted(lab.namespaces)
        for node in lab.nodes:
            assert lab.ping("client", node.addr), f"client cannot reach {node}"
        assert lab.ping(lab.node1, lab.node2.addr)

        lab.cut_link(lab.node1)
        assert not lab.ping("client", lab.node1.addr, timeout=0.3)
        assert not lab.ping(lab.node2, lab.node1.addr, timeout=0.3)
        assert lab.ping("client", lab.node2.addr)

        lab.restore_link(lab.node1)
        assert lab.ping("client", lab.node1.addr)
        ticker = next(iter(lab.processes))
        t1 = time.monotonic()
    torn = time.monotonic() - t1
    assert leftovers(lab) == []
    assert not lab.base.exists()
    assert not (netlab.REGISTRY / lab.id).exists()
    assert not running(ticker)
    # The budget of the whole lab's plumbing (measured ~0.05 s build, ~0.2 s teardown).
    assert built + torn < 2.0, (built, torn, lab.timings)


def test_the_simulator_follows_the_link_and_the_node_paths_are_wired():
    with Lab(tgt_ports=tgt_ports(), resync_seconds=0.3) as lab:
        for node in lab.nodes:
            assert node.drbdadm("up", "iscsi1").returncode == 0
        # The controller's view, through the files and wrappers its config names.
        for node in lab.nodes:
            cfg = node.config()
            res = subprocess.run(
                [cfg["drbd"]["drbdadm"], "cstate", "iscsi1"], capture_output=True, text=True
            )
            assert res.stdout == "Connected\n"
            assert " 0: cs:Connected ro:Secondary/Secondary ds:UpToDate/UpToDate C r-----" in (
                Path(cfg["drbd"]["proc_drbd"]).read_text()
            )
        assert lab.node1.drbdadm("primary", "iscsi1").returncode == 0

        lab.cut_link(lab.node2)
        # No drbdadm call needed: the lab's ticker rewrites /proc/drbd within ~0.1 s.
        deadline = time.monotonic() + 2
        while "cs:WFConnection ro:Primary/Unknown" not in lab.node1.proc_drbd.read_text():
            assert time.monotonic() < deadline, lab.node1.proc_drbd.read_text()
            time.sleep(0.02)
        # Inside node2's namespace, `drbdadm` on PATH is the simulator as node2.
        res = lab.run(lab.node2, ["drbdadm", "role", "iscsi1"])
        assert res.stdout == "Secondary/Unknown\n"

        lab.restore_link(lab.node2)
        deadline = time.monotonic() + 3
        while "cs:Connected" not in lab.node2.proc_drbd.read_text():
            assert time.monotonic() < deadline, lab.node2.proc_drbd.read_text()
            time.sleep(0.02)
        dmesg = subprocess.run([str(lab.node1.bin_dir / "dmesg")], capture_output=True, text=True)
        assert "Began resync as SyncSource" in dmesg.stdout


def serve(lab: Lab, node, backing: Path) -> int:
    """What a promotion does, by hand: tgtd with the target, then the VIP, then an ARP update."""
    pid = lab.start_process(node, ["tgtd", "-f", "-C", str(node.tgt_port)])
    tgtadm = ["tgtadm", "-C", str(node.tgt_port), "--lld", "iscsi"]
    deadline = time.monotonic() + 3
    while lab.run(node, tgtadm + ["--mode", "target", "--op", "show"]).returncode != 0:
        assert time.monotonic() < deadline, "tgtd did not come up"
        time.sleep(0.02)
    for args in (
        ["--mode", "target", "--op", "new", "--tid", "1", "--targetname", lab.iqn],
        [
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            "1",
            "--lun",
            "1",
            "--backing-store",
            str(backing),
        ],
        ["--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL"],
    ):
        lab.run(node, tgtadm + args, check=True)
    lab.run(node, ["ip", "addr", "add", netlab.VIP, "dev", node.interface], check=True)
    lab.start_process(node, ["arping", "-U", "-I", node.interface, "-c", "1", lab.vip])
    return pid


def unserve(lab: Lab, node, pid: int) -> None:
    lab.run(node, ["ip", "addr", "del", netlab.VIP, "dev", node.interface], check=True)
    tgtadm = ["tgtadm", "-C", str(node.tgt_port), "--lld", "iscsi"]
    lab.run(
        node, tgtadm + ["--mode", "target", "--op", "delete", "--force", "--tid", "1"], check=True
    )
    lab.run(node, tgtadm + ["--mode", "system", "--op", "delete"], check=True)
    lab.stop_process(pid, timeout=2)


def test_a_block_written_through_the_vip_reads_back_after_a_move():
    with Lab(tgt_ports=tgt_ports()) as lab:
        disk1, disk2 = (lab.disk_path("iscsi1", n) for n in lab.nodes)
        assert disk1 != disk2
        for node in lab.nodes:
            assert node.drbdadm("up", "iscsi1").returncode == 0
        wait_connected(lab)
        assert lab.node1.drbdadm("primary", "iscsi1").returncode == 0
        pid1 = serve(lab, lab.node1, disk1)
        assert lab.client_probe().ok

        block = os.urandom(512)
        lab.client_write(block, lba=5)
        assert disk1.read_bytes()[5 * 512 : 6 * 512] == block  # node1's own backing file
        assert disk2.read_bytes()[5 * 512 : 6 * 512] == bytes(512)  # not copied yet

        # Real "held open": node1's tgtd has the backing file open, so DRBD refuses to demote.
        res = lab.node1.drbdadm("secondary", "iscsi1")
        assert res.returncode == 11 and "(-12) Device is held open by someone" in res.stderr

        unserve(lab, lab.node1, pid1)
        # A connected Primary demoting: protocol C put every acknowledged write on the peer.
        assert lab.node1.drbdadm("secondary", "iscsi1").returncode == 0
        assert disk2.read_bytes()[5 * 512 : 6 * 512] == block
        assert lab.node2.drbdadm("primary", "iscsi1").returncode == 0
        serve(lab, lab.node2, disk2)
        assert lab.client_read(lba=5) == block
        probe = lab.client_probe()
        assert probe.ok and "VIRTUAL-DISK" in probe.stdout


def test_a_stale_promotion_reads_old_blocks():
    """Per-node files make a stale promotion visible: node2, cut off before a write, promoted
    with --force, serves its own (old) block; when the cut comes after the write, it has it."""
    with Lab(tgt_ports=tgt_ports()) as lab:
        disk1, disk2 = (lab.disk_path("iscsi1", n) for n in lab.nodes)
        for node in lab.nodes:
            assert node.drbdadm("up", "iscsi1").returncode == 0
        wait_connected(lab)
        assert lab.node1.drbdadm("primary", "iscsi1").returncode == 0
        serve(lab, lab.node1, disk1)
        before, after = os.urandom(512), os.urandom(512)
        lab.client_write(before, lba=7)
        lab.cut_link(lab.node2)  # the connection ends: node2 has everything acknowledged so far
        assert disk2.read_bytes()[7 * 512 : 8 * 512] == before
        lab.client_write(after, lba=7)  # acknowledged by node1 alone
        assert disk1.read_bytes()[7 * 512 : 8 * 512] == after
        assert disk2.read_bytes()[7 * 512 : 8 * 512] == before  # node2 is stale now
        assert lab.node2.drbdadm("primary", "--force", "iscsi1").returncode == 0
        assert disk2.read_bytes()[7 * 512 : 8 * 512] == before


def wait_connected(lab: Lab, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while "cs:Connected" not in lab.node1.proc_drbd.read_text():
        assert time.monotonic() < deadline, lab.node1.proc_drbd.read_text()
        time.sleep(0.02)


def test_teardown_after_a_failure_inside_the_lab():
    lab = Lab(tgt_ports=tgt_ports())
    with pytest.raises(RuntimeError):
        with lab:
            lab.start_process(lab.node1, ["sleep", "30"])
            raise RuntimeError("a failing test")
    assert leftovers(lab) == []
    assert not lab.base.exists()


CHILD = textwrap.dedent(
    """
    import json, sys, time
    sys.path.append({repo!r})
    from lab.netlab import Lab
    lab = Lab(tgt_ports=({p1}, {p2})).start()
    lab.start_process(lab.node2, ["sleep", "60"])
    print(json.dumps({{"prefix": lab.prefix, "base": str(lab.base), "id": lab.id}}), flush=True)
    time.sleep(60)
    """
)


def start_child() -> tuple:
    p1, p2 = tgt_ports()
    code = CHILD.format(repo=str(REPO), p1=p1, p2=p2)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    line = child.stdout.readline()
    assert line, "the child lab did not start"
    return child, json.loads(line)


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def namespaces_of(prefix: str) -> list:
    return [ns for ns in existing_namespaces() if ns.startswith(prefix)]


def test_sigterm_tears_the_lab_down():
    child, info = start_child()
    try:
        assert len(namespaces_of(info["prefix"])) == 4
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=10) == -signal.SIGTERM  # cleaned up, then died of the signal
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert namespaces_of(info["prefix"]) == []
    assert not Path(info["base"]).exists()


def test_a_sigkilled_run_is_swept_by_the_next():
    child, info = start_child()
    child.kill()
    child.wait()
    entry = json.loads((netlab.REGISTRY / info["id"]).read_text())
    try:
        before = namespaces_of(info["prefix"])
        assert len(before) == 4  # nothing could clean up
        assert entry["root_pids"] and all(Path(f"/proc/{p}").exists() for p in entry["root_pids"])
        swept = netlab.sweep_stale()
        assert set(before) <= set(swept)
    finally:
        netlab.sweep_stale()
    assert namespaces_of(info["prefix"]) == []
    deadline = time.monotonic() + 5  # the ticker too (dead or a zombie awaiting its reaper)
    while any(running(p) for p in entry["root_pids"]):
        assert time.monotonic() < deadline, entry
        time.sleep(0.02)
    assert not Path(info["base"]).exists()
    assert not (netlab.REGISTRY / info["id"]).exists()


def test_node_configs_load_in_the_controller():
    from iscsi_ha.controller.config import load_config

    lab = Lab(tgt_ports=(1, 2))
    try:
        for node in lab.nodes:
            node.dir.mkdir(parents=True)
            cfg = load_config(str(node.write_config({"interval": 0.5})))
            assert cfg.node_name == node.name and cfg.interval == 0.5
            assert cfg.vip.address == "10.99.0.3/24" and cfg.vip.interface == "eth0"
            assert cfg.target.control_port == node.tgt_port
            assert [lun.path for lun in cfg.target.luns] == [str(lab.disk_path("iscsi1", node))]
            assert cfg.drbd.drbdadm == str(node.bin_dir / "drbdadm")
            assert cfg.xenapi.url == f"http://{node.addr}"
            assert node.controller_argv()[-2:] == ["--config", str(node.config_path)]
    finally:
        import shutil

        shutil.rmtree(lab.base, ignore_errors=True)


def test_pool_master_moves_in_pool_conf_and_in_the_xenapi_fake():
    pytest.importorskip("XenAPI")
    if not netlab.XAPI_FAKE.exists():
        pytest.skip("tests/xapi_fake.py is not there")
    login = textwrap.dedent(
        """
        import sys, XenAPI
        s = XenAPI.Session(sys.argv[1])
        try:
            s.xenapi.login_with_password("root", sys.argv[2], "1.0", "lab-test")
            print("master")
        except XenAPI.Failure as f:
            print(" ".join(f.details))
        """
    )
    with Lab(tgt_ports=tgt_ports()) as lab:
        lab.start_xapi_fake(master="node1")

        def answers():
            return [
                lab.run(
                    n, [sys.executable, "-c", login, n.xapi_url, netlab.XAPI_PASSWORD], check=True
                ).stdout.strip()
                for n in lab.nodes
            ]

        assert lab.node1.pool_conf.read_text() == "master"
        assert answers() == ["master", "HOST_IS_SLAVE 10.99.0.1"]
        lab.set_pool_master(lab.node2)
        assert lab.node1.pool_conf.read_text() == "slave:10.99.0.2"
        assert lab.node2.pool_conf.read_text() == "master"
        assert answers() == ["HOST_IS_SLAVE 10.99.0.2", "master"]


def test_unix_socket_path_limit_is_checked_up_front(tmp_path):
    with pytest.raises(LabError):
        Lab(base_dir=tmp_path / ("x" * 120))
