"""Never serve stale data, on real DRBD 8.4 in the VM lab, with the real controllers.

One booted pair serves every scenario, in order (each starts from where the previous one left
the pair; the module fixture boots it once). Both controllers run with the peer channel (mutual
TLS over the LAN, never the replication link) and DRBD calls ``iscsi-ha fence-peer`` with
``fencing resource-only``. What the user cares about is asserted: who serves, and what the
client reads back through the VIP.

1. Ordinary failover: node1 serves, data D1 written; node1's VM is killed; the pool master moves
   to node2, which watched the Primary vanish: it promotes (the time is printed). D2 is written.
2. Sequential failure: node2's VM is killed too; node1 boots alone as pool master: it holds,
   says why, and exports iscsi_ha_promotion_blocked (the page). node2 boots as master: it serves,
   and the client reads D2 (node2's data), not node1's older D1.
3. The replication link cut, the LAN up: the Primary's fence-peer handler outdates the
   Secondary over the peer channel; a pool-master move to the Outdated node is refused (our
   sentence, and DRBD's own words to `drbdadm primary`); the master back on the UpToDate node
   promotes (the peer is known Outdated); after the link returns: no split brain, resynced.
4. A gap in watching: the Primary's VM killed, the survivor's controller restarted before the
   pool master moves to it: it holds. Then `iscsi-cfg become-primary --accept-stale` promotes.
5. A Primary held open behind a cut link, no fencing: the pool master moves away, the old
   holder's `drbdadm secondary` is refused (a process holds the device open), its VIP is gone.
   The new master watched the link to the end (proof of the newest data) and nobody answers for
   the VIP: only the peer channel says the old holder is still Primary, and it holds. Once the
   opener goes, the old holder demotes and the new master serves what was written before.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from test_vm_drbd import _report, booted_pair  # noqa: E402

from lab.vm import controllers as ctl  # noqa: E402
from lab.vm.harness import VmLab, drbd_resource  # noqa: E402

pytestmark = pytest.mark.vm

CONFIG = "/run/lab/iscsi-ha.yaml"


def _resource(lab: VmLab) -> str:
    venv_bin = Path(sys.executable).parent
    text = drbd_resource(ctl.RES, 0, 7789, lab.vms)
    text = text.replace(
        "\tdisk { c-plan-ahead 0; resync-rate 100M; }\n",
        "\tdisk { c-plan-ahead 0; resync-rate 100M; fencing resource-only; }\n"
        f'\thandlers {{ fence-peer "{venv_bin}/iscsi-ha fence-peer '
        f'--config {CONFIG}"; }}\n',
    )
    assert "fencing resource-only" in text
    return text


def _handlers_can_run(vm) -> None:
    """Let DRBD's handlers run in the VM. The kernel starts them as /sbin/drbdadm in PID 1's
    root, the lab's busybox initramfs, while the system lives chrooted in /newroot (lab/vm/
    image.py): without this every helper fails with exit code 255 ("fence-peer helper broken").
    A two-line helper in the initramfs root chroots into /newroot and runs the real drbdadm."""
    vm.sh(
        "printf '#!/bin/sh\\nexec /bin/chroot /newroot /sbin/drbdadm \"$@\"\\n' "
        "> /proc/1/root/drbd-helper && chmod 755 /proc/1/root/drbd-helper && "
        # printf, not echo: the parameter keeps a trailing newline as part of the path.
        "printf /drbd-helper > /sys/module/drbd/parameters/usermode_helper",
        check=True,
    )
    assert vm.run(["cat", "/sys/module/drbd/parameters/usermode_helper"]).out == "/drbd-helper\n"


def _slow_fence_peer(cfg: dict) -> None:
    # `drbdadm primary` of a disconnected node waits for DRBD's fence-peer handler, and a
    # Python process starts in ~20-30 s under the lab's software emulation (~1-3 s on a
    # host): let the command wait for it instead of killing it at 10 s.
    cfg["command_timeout"] = 60
    cfg["cycle_deadline"] = 70


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    # The machine is shared: at load ~30 an agent took over 90 s (the default) to answer.
    yield from booted_pair(
        tmp_path_factory,
        "vm-stale",
        resources=lambda lab: {ctl.RES: _resource(lab)},
        boot_timeout=300,
        prepare=_handlers_can_run,
        peer_timeout=2,
        edit=_slow_fence_peer,
    )


def boot_again(c: ctl.Controllers, vm) -> None:
    """Power on a killed VM the way a host boots: DRBD up (the drbd service), then iscsi-ha."""
    vm.start()
    vm.wait_ready()
    _handlers_can_run(vm)
    vm.run(["drbdadm", "up", ctl.RES], timeout=60, check=True)
    c.start(vm)


def blocked(c: ctl.Controllers, vm, reason: str) -> bool:
    return (
        ctl.metric(c.metrics(vm), "iscsi_ha_promotion_blocked", resource=ctl.RES, reason=reason)
        == 1.0
    )


def held_because(c: ctl.Controllers, vm) -> "str | None":
    """The reason label of the promotion_blocked series at 1, if any."""
    reasons = ctl.one_hot(c.metrics(vm), "iscsi_ha_promotion_blocked", "reason", resource=ctl.RES)
    return reasons[0] if reasons else None


def pattern(tag: bytes) -> bytes:
    return (tag * (32 * 512 // len(tag) + 1))[: 32 * 512]


D1, D2 = pattern(b"D1-node1-wrote-this "), pattern(b"D2-node2-wrote-this-later ")


def test_ordinary_failover_still_promotes(pair):
    lab, c = pair
    n1, n2 = lab.vms
    try:
        assert c.client_write(D1, lba=64).get("ok")
        # Let node2 look at the connected pair at least once more (it watches every 2 s).
        time.sleep(3)
        t0 = time.monotonic()
        n1.crash()
        c.pids.pop("node1", None)
        c.set_pool_master("node2")
        ctl.wait_for(
            "node2 to serve at the VIP after the failover",
            lambda: c.serving(n2) and c.vip_local(n2) and c.client_inq() == 0,
            90,
            interval=0.2,
        )
        took = time.monotonic() - t0
        print(f"\nfailover (node1 killed, master moved to node2): served again after {took:.1f} s")
        assert c.client_read(32, lba=64) == D1
        assert c.client_write(D2, lba=64).get("ok")
        assert c.client_read(32, lba=64) == D2
    except Exception:
        _report(lab)
        raise


def test_sequential_failure_the_stale_host_holds_and_the_newer_one_serves(pair):
    lab, c = pair
    n1, n2 = lab.vms
    try:
        n2.crash()
        c.pids.pop("node2", None)
        c.set_pool_master("node1")
        boot_again(c, n1)  # alone: node2 is dead
        # Two guards may hold it, and either pages: ours (the ledger proves nothing across a
        # reboot) and DRBD's own (with fencing, a disk attached without the peer-outdated flag
        # comes up Consistent, not UpToDate).
        reason = ctl.wait_for("node1 to hold and page", lambda: held_because(c, n1), 90)
        time.sleep(6)  # three more cycles: still holding
        assert not c.serving(n1) and not c.vip_local(n1)
        assert c.drbd(n1, "role") == "Secondary/Unknown"
        log = c.controller_log(n1)
        print(f"\nnode1 at boot: {c.drbd(n1, 'dstate')}, held because {reason}")
        if reason == "rebooted":
            assert "cannot prove this host has the newest data" in log
            assert "this host rebooted since" in log
        else:
            assert reason == "local_disk_consistent", reason
            assert "local disk is Consistent and the peer is unreachable" in log
        # node2 comes back as pool master (node1 becomes slave first).
        c.set_pool_master("node2")
        boot_again(c, n2)
        ctl.wait_for(
            "node2 to serve at the VIP",
            lambda: c.serving(n2) and c.vip_local(n2) and c.client_inq() == 0,
            120,
        )
        assert c.client_read(32, lba=64) == D2  # node2's data, not node1's D1
        ctl.wait_for(
            "node1 to resync from node2", lambda: c.drbd(n1, "dstate") == "UpToDate/UpToDate", 120
        )
        assert "Split-Brain detected" not in n1.run(["dmesg"]).out
        assert held_because(c, n1) is None
    except Exception:
        _report(lab)
        raise


def test_link_cut_outdates_the_secondary_and_it_is_never_promoted(pair):
    lab, c = pair
    n1, n2 = lab.vms
    try:
        assert c.drbd(n2, "role") == "Primary/Secondary"
        for vm in lab.vms:
            vm.set_replication_link(False)
        ctl.wait_for(
            "node2's fence-peer handler to outdate node1",
            lambda: c.drbd(n1, "dstate") == "Outdated/DUnknown",
            60,
        )
        # node1 is Outdated before node2's handler returns (it takes ~35 s under TCG: Python's
        # start-up in the emulated VM); then node2's DRBD records the peer Outdated.
        ctl.wait_for(
            "node2's DRBD to record the peer Outdated",
            lambda: c.drbd(n2, "dstate") == "UpToDate/Outdated",
            90,
        )
        assert "fence-peer helper returned 4" in n2.run(["dmesg"]).out
        # The pool master moves to the Outdated node: refused, in our words and in DRBD's.
        c.set_pool_master("node1")
        ctl.wait_for(
            "node1's controller to refuse",
            lambda: "local disk is Outdated and the peer is unreachable" in c.controller_log(n1),
            60,
        )
        assert not c.serving(n1)
        drbd_says = n1.run(["drbdadm", "primary", ctl.RES], timeout=30)
        assert drbd_says.rc != 0
        assert "Need access to UpToDate data" in drbd_says.err + drbd_says.out
        # Back to node2: it promotes alone because the peer is known Outdated.
        c.set_pool_master("node2")
        ctl.wait_for("node2 to serve again", lambda: c.serving(n2) and c.client_inq() == 0, 90)
        assert c.client_read(32, lba=64) == D2
        for vm in lab.vms:
            vm.set_replication_link(True)
        ctl.wait_for(
            "node1 to resync",
            lambda: all(c.drbd(vm, "dstate") == "UpToDate/UpToDate" for vm in lab.vms),
            120,
        )
        for vm in lab.vms:
            assert "Split-Brain detected" not in vm.run(["dmesg"]).out
    except Exception:
        _report(lab)
        raise


def test_a_restarted_survivor_holds_then_accept_stale_promotes(pair):
    lab, c = pair
    n1, n2 = lab.vms
    try:
        ctl.wait_for(
            "node1 Connected and Secondary", lambda: c.drbd(n1, "cstate") == "Connected", 60
        )
        time.sleep(3)  # node1's controller sees the connected pair
        n2.crash()
        c.pids.pop("node2", None)
        ctl.wait_for(
            "node1 to see the peer gone", lambda: c.drbd(n1, "cstate") == "WFConnection", 60
        )
        c.stop(n1)  # a gap in watching
        time.sleep(1)
        c.start(n1)
        c.set_pool_master("node1")
        ctl.wait_for("node1 to hold", lambda: blocked(c, n1, "restarted"), 90)
        assert not c.serving(n1)
        assert "the controller restarted since" in c.controller_log(n1)
        # The operator's way out.
        assert c.cfg(n1, "manual-mode-enable").rc == 0
        res = c.cfg(n1, "become-primary", "--accept-stale", ctl.RES, "--yes")
        assert res.rc == 0, res.out + res.err
        assert "peer last seen" in res.out and "drbdadm get-gi" in res.out
        ctl.wait_for("node1 to serve", lambda: c.serving(n1) and c.client_inq() == 0, 60)
        assert c.client_read(32, lba=64) == D2  # what node2 had: node1 resynced it before
        assert "--accept-stale r0" in c.controller_log(n1)
        assert "uid 0" in c.controller_log(n1)
    except Exception:
        _report(lab)
        raise


D3 = pattern(b"D3-node1-wrote-before-the-cut ")


def test_a_primary_held_open_behind_a_cut_link_is_never_joined_by_a_second(pair):
    lab, c = pair
    n1, n2 = lab.vms
    opener = None
    try:
        # After scenario 4 node1 serves in manual mode and node2 is down (run alone: a fresh
        # pair). Bring node2 back as slave and node1 out of manual mode.
        c.set_pool_master("node1")
        if not n2.alive():
            boot_again(c, n2)
        ctl.wait_for(
            "both Connected and UpToDate",
            lambda: all(
                c.drbd(vm, "cstate") == "Connected" and c.drbd(vm, "dstate") == "UpToDate/UpToDate"
                for vm in lab.vms
            ),
            180,
        )
        c.cfg(n1, "manual-mode-disable")
        ctl.wait_for(
            "node1 to serve out of manual mode",
            lambda: "MANUAL MODE: disabled" in c.status(n1) and c.serving(n1) and c.vip_local(n1),
            90,
        )
        # No fencing: the case where DRBD itself cannot outdate the peer behind the cut.
        for vm in lab.vms:
            vm.sh(
                f"sed -i 's/ fencing resource-only;//' /etc/drbd.d/{ctl.RES}.res && "
                f"drbdadm adjust {ctl.RES}",
                check=True,
            )
            assert "fencing" not in vm.run(["drbdsetup", "show"]).out
        assert c.client_write(D3, lba=64).get("ok")
        time.sleep(3)  # node2 watches the connected pair (every 2 s): its proof of D3
        opener = n1.spawn(["/bin/sh", "-c", "exec sleep 100000 < /dev/drbd0"])
        ctl.wait_for(
            "the opener to hold /dev/drbd0",
            lambda: "/dev/drbd0" in n1.sh(f"ls -l /proc/{opener}/fd", check=False).out,
            20,
        )
        for vm in lab.vms:
            vm.set_replication_link(False)
        ctl.wait_for(
            "both to see the link down",
            lambda: all(c.drbd(vm, "cstate") == "WFConnection" for vm in lab.vms),
            90,
        )
        c.set_pool_master("node2")
        ctl.wait_for(
            "node1 to give up the VIP and the target",
            lambda: not c.vip_local(n1) and not c.serving(n1),
            120,
        )
        # The controllers' logs are read from the host (the metrics need a Python start in
        # the emulated VM, ~10 s at load): then the page, once.
        still = (
            f"not promoting {ctl.RES}: the peer says over the peer channel that it is still Primary"
        )
        ctl.wait_for(
            "node2 to hold because the peer channel says node1 is Primary",
            lambda: still in c.controller_log(n2),
            120,
        )
        time.sleep(6)  # more cycles of both: still one Primary
        assert c.drbd(n1, "role") == "Primary/Unknown"
        assert c.drbd(n2, "role") == "Secondary/Unknown"
        assert not c.serving(n2) and not c.vip_local(n2)
        assert "held open" in c.controller_log(n1).lower()
        ctl.wait_for("the page", lambda: blocked(c, n2, "peer_channel_primary"), 90)
        # The opener goes: node1 demotes on its next cycle, node2 promotes with its proof.
        n1.kill(opener)
        opener = None
        ctl.wait_for(
            "node2 to serve at the VIP",
            lambda: c.serving(n2) and c.vip_local(n2) and c.client_inq() == 0,
            120,
        )
        assert c.drbd(n1, "role") == "Secondary/Unknown"
        assert c.client_read(32, lba=64) == D3
    except Exception:
        for vm in lab.vms:  # the lab's files do not outlive pytest's temporary-directory rotation
            print(
                f"\n--- {vm.name}: {c.drbd(vm, 'role')} {c.drbd(vm, 'cstate')} "
                f"{c.drbd(vm, 'dstate')}\n{c.cfg(vm, 'status').out}\n"
                f"{c.controller_log(vm)[-4000:]}"
            )
        _report(lab)
        raise
    finally:
        if opener is not None:
            n1.kill(opener)
