"""The SR adapter over the real XenAPI SDK, against the wire-level xapi fake.

The fake's pool has a non-shared ``lvm`` "Local storage" SR per host (which must be ignored) and
the ``lvmoiscsi`` SRs each test adds. Plugging is checked on the fake's state, not on what the
adapter says about itself; failures carry xapi's own error (``HOST_OFFLINE ...``).
"""

from __future__ import annotations

import time

import pytest
from iscsi_ha.controller.model import SrObservation
from iscsi_ha.controller.systems.sr import SrAdapter, build_sr_observation
from iscsi_ha.controller.systems.xenapi import XenApiClient
from xapi_fake import XapiFake, loopback_hosts

PASSWORD = "sr-secret"


@pytest.fixture
def fake():
    with XapiFake(loopback_hosts(), master="node1", password=PASSWORD) as pool:
        yield pool


def adapter(url, timeout=2.0):
    return SrAdapter(XenApiClient(url, password=PASSWORD, timeout=timeout))


def test_observe_lists_iscsi_srs_and_their_pbds(fake):
    sr = fake.add_lvmoiscsi_sr("iSCSI-HA", attached={"node1": True, "node2": False})
    pbds = fake.pbds_of(sr)
    obs = adapter(fake.url("node1")).observe()

    assert obs.reachable and obs.error is None
    assert [(s.uuid, s.name, s.type) for s in obs.srs] == [(sr, "iSCSI-HA", "lvmoiscsi")]
    assert [(p.host, p.uuid, p.attached) for p in obs.srs[0].pbds] == [
        ("node1", pbds["node1"]["uuid"], True),
        ("node2", pbds["node2"]["uuid"], False),
    ]
    assert obs.unattached_pbds() == (pbds["node2"]["uuid"],)


def test_observe_sorts_several_srs_and_ignores_other_types(fake):
    fake.add_lvmoiscsi_sr("vm-store-b", attached=True)
    fake.add_lvmoiscsi_sr("vm-store-a", attached=False)
    obs = adapter(fake.url("node2")).observe()  # through the slave: redirected to the master
    assert [s.name for s in obs.srs] == ["vm-store-a", "vm-store-b"]
    assert all(s.type == "lvmoiscsi" for s in obs.srs)
    assert len(obs.unattached_pbds()) == 2

    wider = SrAdapter(XenApiClient(fake.url("node1"), password=PASSWORD), ("lvmoiscsi", "lvm"))
    assert len(wider.observe().srs) == 4  # the two local-storage SRs appear when asked for


def test_observe_when_xapi_is_unreachable_is_an_observation(fake):
    fake.add_lvmoiscsi_sr()
    url = fake.url("node1")
    fake.set_reachable("node1", False)
    fake.set_reachable("node2", False)
    obs = adapter(url).observe()
    assert obs == SrObservation(reachable=False, error=obs.error)
    assert url in obs.error and "Connection refused" in obs.error


def test_observe_when_xapi_hangs_is_bounded_and_counted(fake):
    fake.add_lvmoiscsi_sr()
    sr_adapter = adapter(fake.url("node1"), timeout=0.4)
    fake.set_delay(5)
    start = time.monotonic()
    obs = sr_adapter.observe()
    assert time.monotonic() - start < 1.4
    assert not obs.reachable and "timed out after 0.4s" in obs.error
    assert sr_adapter.client.stats.timeouts == {"xenapi": 1}


def test_plug_attaches_through_the_master(fake):
    sr = fake.add_lvmoiscsi_sr(attached=False)
    sr_adapter = adapter(fake.url("node2"))  # configured at the slave
    todo = sr_adapter.observe().unattached_pbds()
    assert len(todo) == 2

    result = sr_adapter.plug(todo)
    assert result.ok, result.message
    assert all(p["currently_attached"] for p in fake.pbds_of(sr).values())
    assert sr_adapter.observe().unattached_pbds() == ()
    plug_calls = [host for host, method in fake.calls if method == "PBD.plug"]
    assert plug_calls == ["node1", "node1"]

    # Idempotent: plugging attached PBDs again is fine (xapi makes it a no-op).
    assert sr_adapter.plug(todo).ok


def test_plug_follows_the_master_after_a_move(fake):
    sr = fake.add_lvmoiscsi_sr(attached=False)
    sr_adapter = adapter(fake.url("node1"))
    todo = sr_adapter.observe().unattached_pbds()
    fake.set_master("node2")
    assert sr_adapter.plug(todo).ok
    assert all(p["currently_attached"] for p in fake.pbds_of(sr).values())
    assert {h for h, m in fake.calls if m == "PBD.plug"} == {"node2"}


def test_plug_reports_which_pbd_failed_with_xapis_words(fake):
    sr = fake.add_lvmoiscsi_sr(attached=False)
    pbds = fake.pbds_of(sr)
    fake.set_host_live("node2", False)
    sr_adapter = adapter(fake.url("node1"))
    result = sr_adapter.plug([pbds["node2"]["uuid"], pbds["node1"]["uuid"]])

    assert not result.ok and not result.refused and result.reason == "pbd_plug_failed"
    node2_ref = fake.host_ref("node2")
    assert result.message == (
        f"plugged 1 of 2 PBDs; PBD {pbds['node2']['uuid']} on node2: HOST_OFFLINE {node2_ref}"
    )
    # The failure of one did not stop the other.
    state = fake.pbds_of(sr)
    assert state["node1"]["currently_attached"] and not state["node2"]["currently_attached"]


def test_plug_unknown_pbd(fake):
    result = adapter(fake.url("node1")).plug(["0000-no-such-pbd"])
    assert not result.ok
    assert "PBD 0000-no-such-pbd: UUID_INVALID PBD 0000-no-such-pbd" in result.message


def test_plug_stops_at_the_first_timeout(fake):
    sr = fake.add_lvmoiscsi_sr(attached=False)
    uuids = [p["uuid"] for p in fake.pbds_of(sr).values()]
    sr_adapter = adapter(fake.url("node1"), timeout=0.4)
    sr_adapter.client.login()
    fake.set_delay(5)
    start = time.monotonic()
    result = sr_adapter.plug(uuids)
    assert time.monotonic() - start < 1.4  # one timeout, not one per PBD
    assert not result.ok and result.reason == "xenapi_timeout"
    assert result.message.startswith("plugged 0 of 2 PBDs; stopped: ")
    assert "timed out" in result.message


def test_plug_when_unreachable(fake):
    url = fake.url("node1")
    fake.set_reachable("node1", False)
    result = adapter(url).plug(["some-pbd"])
    assert not result.ok and result.reason == "xenapi_unreachable"
    assert "Connection refused" in result.message


def test_plug_nothing():
    result = SrAdapter(XenApiClient("http://127.0.0.1:9", password=PASSWORD)).plug([])
    assert result.ok and result.message == "no PBDs to plug"


# --------------------------------------------------------------------------------------------
# The pure builder: unknown fields, odd values, garbage
# --------------------------------------------------------------------------------------------


def test_builder_tolerates_unknown_and_missing_fields():
    srs = {
        "OpaqueRef:sr1": {
            "uuid": "sr-1",
            "name_label": "iscsi",
            "type": "lvmoiscsi",
            "PBDs": ["OpaqueRef:p1", "OpaqueRef:p2", "OpaqueRef:gone"],
            "some_future_field": {"x": "1"},
        },
        "OpaqueRef:sr2": {"uuid": "sr-2", "type": "lvmoiscsi"},  # no name, no PBDs
        "OpaqueRef:iso": {"uuid": "iso", "type": "iso", "PBDs": []},
    }
    pbds = {
        "OpaqueRef:p1": {"uuid": "p-1", "host": "OpaqueRef:h1", "currently_attached": True},
        "OpaqueRef:p2": {
            "uuid": "p-2",
            "host": "OpaqueRef:h-unknown",
            "currently_attached": "false",
        },
    }
    hosts = {"OpaqueRef:h1": {"name_label": "node1", "new_field": 1}}
    obs = build_sr_observation(srs, pbds, hosts)
    assert obs.reachable and obs.error is None
    assert [(s.uuid, s.name) for s in obs.srs] == [("sr-2", ""), ("sr-1", "iscsi")]
    iscsi = obs.srs[1]
    assert [(p.uuid, p.host, p.attached) for p in iscsi.pbds] == [
        ("p-2", "OpaqueRef:h-unknown", False),
        ("p-1", "node1", True),
    ]


def test_builder_reports_garbage_with_a_quote():
    obs = build_sr_observation(
        {
            "OpaqueRef:sr1": "not a record",
            "OpaqueRef:sr2": {"uuid": "s2", "type": "lvmoiscsi", "PBDs": "nope"},
        },
        ["not", "a", "map"],
        {},
    )
    assert obs.reachable
    assert "cannot read SR record OpaqueRef:sr1: 'not a record'" in obs.error
    assert "cannot read PBD.get_all_records: ['not', 'a', 'map']" in obs.error
    assert "SR s2 has PBDs 'nope'" in obs.error
    assert [s.uuid for s in obs.srs] == ["s2"] and obs.srs[0].pbds == ()
