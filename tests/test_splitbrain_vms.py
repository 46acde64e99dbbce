"""Which VMs keep their disks on this target (split-brain evidence), over the real XenAPI SDK
against the wire-level xapi fake (VM -> VBD -> VDI -> SR -> PBD, as XenAPI documents them)."""

from __future__ import annotations

import pytest
from iscsi_ha.controller.systems.vms import read_vms
from iscsi_ha.controller.systems.xenapi import XenApiClient
from xapi_fake import XapiFake, loopback_hosts

PASSWORD = "vm-secret"
IQN = "iqn.2024-01.org.iscsi-ha:storage"


@pytest.fixture
def fake():
    with XapiFake(loopback_hosts(), master="node1", password=PASSWORD) as pool:
        yield pool


def test_vms_with_disks_on_this_targets_srs_running_first(fake):
    ours = fake.add_lvmoiscsi_sr("iSCSI-HA", attached=True, iqn=IQN)
    other = fake.add_lvmoiscsi_sr("elsewhere", attached=True, iqn="iqn.2020-01.com.example:other")
    fake.add_vm("web", ours, host="node2", disks=2)
    fake.add_vm("db", ours, host="node1")
    fake.add_vm("old", ours, host=None, power_state="Halted")
    fake.add_vm("mail", other, host="node1")  # another target: not ours
    fake.add_vm("Control domain on host: node1", ours, host="node1", control_domain=True)
    # Through the slave's endpoint: the client follows HOST_IS_SLAVE to the master.
    vms, error = read_vms(XenApiClient(fake.url("node2"), password=PASSWORD, timeout=2), IQN)
    assert error is None
    assert [v.describe() for v in vms] == [
        "db (Running on node1, 1 disk(s))",
        "web (Running on node2, 2 disk(s))",
        "old (Halted, 1 disk(s))",
    ]


def test_xapi_unreachable_is_said_not_raised():
    vms, error = read_vms(XenApiClient("http://127.0.0.1:9", password=PASSWORD, timeout=1), IQN)
    assert vms is None and error
