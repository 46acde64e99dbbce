"""The storage probe and the data-safety audit on real DRBD 8.4 (the VM lab): both controllers
running, tgtd serving ``/dev/drbd0`` at the VIP, each host's probe (our RFC 7143 initiator,
``controller/systems/iscsi_probe.py``) logging in through the VIP like any XenServer host.

Asserted, for each host's ``iscsi_ha_storage_probe_success{observer,lun="1"}``: 1 while node1
serves; 0 while nothing serves (node1 put in manual mode and told ``become-secondary``: VIP,
target and Primary released, both controllers still running and probing); 1 again once node1
serves again (``become-primary``, then automatic mode); 1 after a failover to node2 (the pool
master moved). The client on the LAN bridge (libiscsi's ``iscsi-inq``) is asked the same question
at each step, so the probe is checked against a real initiator, not against itself. The audit's
verdicts of the lab's resource as the kernel runs it (protocol C, default split-brain policies,
no fencing) are checked once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from test_vm_drbd import booted_pair  # noqa: E402

from lab.vm import controllers as ctl  # noqa: E402

pytestmark = pytest.mark.vm
SUCCESS = "iscsi_ha_storage_probe_success"
# A probe runs every cycle interval (2 s here); a step is seen within a few runs. Generous
# because a VM's cycle takes 1-20 s under TCG on a loaded machine.
SEEN_WITHIN = 90.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    # Room for a loaded machine: 90 s (the default) was too short for an agent to answer.
    yield from booted_pair(tmp_path_factory, "vm-probe", boot_timeout=300, settle_limit=240)


RUNS = "iscsi_ha_storage_probes_total"


def probe_state(c, vm):
    """(runs so far, latest verdict) of ``vm``'s probe of LUN 1, scraped over the LAN."""
    s = c.scrape(vm)
    return (
        ctl.metric(s, RUNS, observer=vm.name, lun="1") or 0.0,
        ctl.metric(s, SUCCESS, observer=vm.name, lun="1"),
    )


def each_probe_says(lab, c, want: float, what: str) -> None:
    """Each host's probe reports ``want`` in a run made after this step began (its run counter
    moved on by two: a result from before the step does not count). Hosts are checked apart:
    under TCG on a loaded machine a run can miss its 2 s limit now and then (the VM gets no CPU
    for seconds), so the two need not agree at one instant."""
    start = {vm.name: probe_state(c, vm)[0] for vm in lab.vms}
    last = {}
    for vm in lab.vms:

        def fresh(vm=vm):
            last[vm.name] = probe_state(c, vm)
            runs, verdict = last[vm.name]
            return runs >= start[vm.name] + 2 and verdict == want

        try:
            ctl.wait_for(f"{vm.name}'s probe to say {want:g} ({what})", fresh, SEEN_WITHIN, 1.0)
        except Exception:
            print(f"\nprobe (runs, verdict) at start {start}, last {last}")
            for other in lab.vms:
                print(f"--- {other.name} controller log (tail)")
                print(c.controller_log(other)[-3000:])
            raise


def test_audit_of_the_lab_resource_as_the_kernel_runs_it(pair):
    lab, c = pair
    for vm in lab.vms:
        s = c.scrape(vm)
        assert ctl.metric(s, "iscsi_ha_audit_error", check="drbd") == 0.0, vm.name
        assert (
            ctl.metric(s, "iscsi_ha_drbd_replication_protocol", resource="r0", protocol="C") == 1.0
        )
        assert ctl.metric(s, "iscsi_ha_drbd_replication_protocol", protocol="A") == 0.0
        assert ctl.metric(s, "iscsi_ha_drbd_fencing", resource="r0") == 0.0  # the lab has none
        for policy in ("0pri", "1pri", "2pri"):
            assert ctl.metric(s, "iscsi_ha_drbd_split_brain_policy_discards", policy=policy) == 0.0


def test_probe_follows_what_the_client_gets(pair):
    lab, c = pair
    n1, n2 = lab.vm("node1"), lab.vm("node2")

    # Served by node1: both observers log in through the VIP and read block 0.
    assert c.client_inq() == 0
    each_probe_says(lab, c, 1.0, "node1 serves")

    # Nothing serves: node1 releases everything and stays Secondary (manual mode); node2 is not
    # the pool master, so it does not take over. Both controllers keep running and probing.
    assert c.cfg(n1, "manual-mode-enable").rc == 0
    res = c.cfg(n1, "become-secondary")
    assert res.rc == 0, res
    ctl.wait_for(
        "nothing serves at the VIP",
        lambda: not any(c.serving(vm) or c.vip_local(vm) for vm in lab.vms),
        120,
    )
    assert c.client_inq() != 0
    each_probe_says(lab, c, 0.0, "nothing serves")

    # node1 serves again: the operator's way back (manual-mode-disable refuses while the pool
    # master's storage role is secondary), then automatic mode.
    res = c.cfg(n1, "become-primary")
    assert res.rc == 0, res
    ctl.wait_for("node1 serves again", lambda: c.serving(n1) and c.vip_local(n1), 180)
    each_probe_says(lab, c, 1.0, "node1 serves again")
    res = c.cfg(n1, "manual-mode-disable")
    assert res.rc == 0, res

    # Failover: the pool master moves to node2, which promotes and serves.
    c.set_pool_master("node2")
    ctl.wait_for(
        "node2 serves at the VIP",
        lambda: c.serving(n2) and c.vip_local(n2) and not c.serving(n1),
        180,
    )
    assert ctl.wait_for("the client reads through the VIP", lambda: c.client_inq() == 0, 60)
    each_probe_says(lab, c, 1.0, "node2 serves after the failover")
    for vm in lab.vms:
        samples = c.scrape(vm)
        runs = ctl.metric(samples, "iscsi_ha_storage_probes_total", observer=vm.name, lun="1")
        fails = ctl.metric(
            samples, "iscsi_ha_storage_probe_failures_total", observer=vm.name, lun="1"
        )
        assert runs and fails and 0 < fails < runs, (vm.name, runs, fails)
        total = ctl.metric(samples, "iscsi_ha_storage_probe_duration_seconds_sum", observer=vm.name)
        count = ctl.metric(
            samples, "iscsi_ha_storage_probe_duration_seconds_count", observer=vm.name
        )
        print(f"\n{vm.name}: {runs:g} probes, {fails:g} failed, mean {total / count:.3f} s")
