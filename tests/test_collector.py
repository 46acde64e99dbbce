"""The snapshot collector: names, labels and values for each situation, checked by promtool.

Each test builds a fresh ``CollectorRegistry`` and asserts with ``get_sample_value`` (client
python's own reader), so the assertions read the registry the way a scrape does.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import threading
import time

import pytest
import snapshots
from iscsi_ha.controller import model
from iscsi_ha.exporter import catalogue
from iscsi_ha.exporter.collector import METRICS, LatestSnapshot, SnapshotCollector
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

NAMES = {name for name, _kind, _labels in METRICS}
BASE = {"iscsi_ha_up", "iscsi_ha_build_info", "iscsi_ha_start_time_seconds"}


def registry_for(snapshot) -> CollectorRegistry:
    registry = CollectorRegistry()
    SnapshotCollector(lambda: snapshot, registry)
    return registry


def value(registry: CollectorRegistry, name: str, **labels):
    return registry.get_sample_value(name, labels)


def families(registry: CollectorRegistry) -> dict:
    return {m.name: m for m in registry.collect()}


def exposed_names(registry: CollectorRegistry) -> set:
    out = set()
    for m in registry.collect():
        if m.type == "counter":
            out.add(m.name + "_total")
        elif m.type == "info":
            out.add(m.name + "_info")
        else:
            out.add(m.name)
    return out


def series(registry: CollectorRegistry, name: str) -> list:
    return [s for m in registry.collect() for s in m.samples if s.name == name]


def one_hot(registry, name, choices, **labels):
    """The value of every choice for ``labels``; asserts each is present."""
    got = {}
    for choice in choices:
        key = "state" if name.endswith("_state") else "role" if "role" in name else "outcome"
        v = value(registry, name, **labels, **{key: choice})
        assert v is not None, f"{name}{labels} has no series for {choice}"
        got[choice] = v
    return got


# ---------------------------------------------------------------------------------------------


def test_master():
    snap = snapshots.master()
    r = registry_for(snap)
    last = snap.last
    assert value(r, "iscsi_ha_up") == 1
    assert value(r, "iscsi_ha_build_info", version="0.1.0", drbd_version="8.4.11") == 1
    assert value(r, "iscsi_ha_start_time_seconds") == snap.started
    assert value(r, "iscsi_ha_host_info", hostname="xcp-host1") == 1
    assert one_hot(r, "iscsi_ha_pool_role", ["master", "slave", "unknown"]) == {
        "master": 1,
        "slave": 0,
        "unknown": 0,
    }
    assert value(r, "iscsi_ha_drbd_role", resource="iscsi1", role="Primary") == 1
    assert value(r, "iscsi_ha_drbd_role", resource="iscsi1", role="Secondary") == 0
    assert value(r, "iscsi_ha_drbd_peer_role", resource="iscsi1", role="Secondary") == 1
    assert value(r, "iscsi_ha_drbd_connection_state", resource="iscsi1", state="Connected") == 1
    assert value(r, "iscsi_ha_drbd_connection_state", resource="iscsi1", state="StandAlone") == 0
    for side in ("local", "peer"):
        assert (
            value(r, "iscsi_ha_drbd_disk_state", resource="iscsi1", side=side, state="UpToDate")
            == 1
        )
    assert value(r, "iscsi_ha_drbd_out_of_sync_bytes", resource="iscsi1") == 0
    assert value(r, "iscsi_ha_drbd_sync_progress_ratio", resource="iscsi1") == 1
    assert value(r, "iscsi_ha_drbd_sync_eta_seconds", resource="iscsi1") is None
    assert value(r, "iscsi_ha_drbd_split_brain", resource="iscsi1") == 0
    assert value(r, "iscsi_ha_drbd_quorum", resource="iscsi1") == 1
    assert value(r, "iscsi_ha_drbd_resource_configured", resource="iscsi1") == 1
    assert value(r, "iscsi_ha_drbd_resource_error", resource="iscsi1") == 0
    assert value(r, "iscsi_ha_target_daemon_up") == 1
    assert value(r, "iscsi_ha_target_present") == 1
    assert value(r, "iscsi_ha_target_serving") == 1
    assert value(r, "iscsi_ha_target_luns") == 1
    assert value(r, "iscsi_ha_target_sessions") == 2
    assert value(r, "iscsi_ha_vip_info", address="10.10.10.3/24", interface="xenbr0") == 1
    assert value(r, "iscsi_ha_vip_local") == 1
    assert value(r, "iscsi_ha_vip_conflict") == 0
    assert value(r, "iscsi_ha_vip_announce_due") == 0
    assert value(r, "iscsi_ha_xenapi_reachable") == 1
    assert value(r, "iscsi_ha_sr_unattached_pbds") == 0
    sr = "6f1e0c2a-3b8e-4f61-9d5e-2a7c1b0e9f11"
    assert (
        value(r, "iscsi_ha_sr_pbd_attached", sr=sr, sr_name="iSCSI HA storage", host="xcp-host2")
        == 1
    )
    assert one_hot(r, "iscsi_ha_desired_role", ["primary", "secondary", "none"]) == {
        "primary": 1,
        "secondary": 0,
        "none": 0,
    }
    assert value(r, "iscsi_ha_refusals") == 0
    assert value(r, "iscsi_ha_planned_actions") == 0
    assert one_hot(r, "iscsi_ha_last_cycle_outcome", ["ok", "held", "error"]) == {
        "ok": 1,
        "held": 0,
        "error": 0,
    }
    assert value(r, "iscsi_ha_last_cycle_timestamp_seconds") == last.started + last.duration
    assert value(r, "iscsi_ha_last_cycle_duration_seconds") == last.duration
    assert value(r, "iscsi_ha_cycle_interval_seconds") == 5
    assert value(r, "iscsi_ha_dry_run") == 0
    assert value(r, "iscsi_ha_manual_mode") == 0
    assert one_hot(r, "iscsi_ha_manual_mode_requested_role", ["primary", "secondary", "none"]) == {
        "primary": 0,
        "secondary": 0,
        "none": 1,
    }
    assert value(r, "iscsi_ha_manual_mode_since_timestamp_seconds") is None
    for system in ("drbd", "target", "vip", "sr"):
        assert value(r, "iscsi_ha_observation_error", system=system) == 0


def test_master_counters_are_copied_from_the_snapshot():
    snap = snapshots.master()
    c = snap.counters
    r = registry_for(snap)
    assert value(r, "iscsi_ha_cycles_total", result="ok") == 1200
    assert value(r, "iscsi_ha_cycles_total", result="held") == 3
    assert value(r, "iscsi_ha_cycles_total", result="error") == 1
    assert value(r, "iscsi_ha_cycle_overruns_total") == 1
    assert value(r, "iscsi_ha_target_daemon_restarts_total") == 1
    assert value(r, "iscsi_ha_actions_total", action="promote", result="ok") == 2
    assert value(r, "iscsi_ha_actions_total", action="promote", result="refused") == 1
    assert value(r, "iscsi_ha_actions_total", action="drbd_up", result="error") == 1
    # Every action x result has a series, also those that never happened.
    for action in model.ACTION_NAMES.values():
        for result in ("ok", "error", "refused"):
            assert value(r, "iscsi_ha_actions_total", action=action, result=result) is not None
    assert value(r, "iscsi_ha_actions_total", action="sr_plug", result="ok") == 0
    assert value(r, "iscsi_ha_commands_total", command="drbdadm") == c.command_calls["drbdadm"]
    assert value(r, "iscsi_ha_command_duration_seconds_total", command="arping") == 80.0
    assert value(r, "iscsi_ha_command_timeouts_total", command="drbdadm") == 1
    # A command that never timed out still has its zero.
    assert value(r, "iscsi_ha_command_timeouts_total", command="tgtadm") == 0
    hist = c.cycle_duration
    assert value(r, "iscsi_ha_cycle_duration_seconds_count") == hist.count
    assert value(r, "iscsi_ha_cycle_duration_seconds_sum") == pytest.approx(hist.total)
    assert value(r, "iscsi_ha_cycle_duration_seconds_bucket", le="0.05") == hist.count - 3
    assert value(r, "iscsi_ha_cycle_duration_seconds_bucket", le="10.0") == hist.count - 1
    assert value(r, "iscsi_ha_cycle_duration_seconds_bucket", le="+Inf") == hist.count


def test_slave():
    r = registry_for(snapshots.slave())
    assert value(r, "iscsi_ha_pool_role", role="slave") == 1
    assert value(r, "iscsi_ha_pool_role", role="master") == 0
    assert value(r, "iscsi_ha_drbd_role", resource="iscsi1", role="Secondary") == 1
    assert value(r, "iscsi_ha_drbd_peer_role", resource="iscsi1", role="Primary") == 1
    assert value(r, "iscsi_ha_target_daemon_up") == 1  # kept running, empty, for fast promotion
    assert value(r, "iscsi_ha_target_serving") == 0
    assert value(r, "iscsi_ha_target_luns") == 0
    assert value(r, "iscsi_ha_vip_local") == 0
    assert value(r, "iscsi_ha_desired_role", role="secondary") == 1
    assert value(r, "iscsi_ha_cycles_total", result="held") == 0
    # Not probed, not observed: absent rather than a made-up 0.
    assert value(r, "iscsi_ha_vip_conflict") is None
    assert value(r, "iscsi_ha_sr_unattached_pbds") is None
    assert series(r, "iscsi_ha_sr_pbd_attached") == []
    assert value(r, "iscsi_ha_xenapi_reachable") == 1


def test_sync_in_progress():
    r = registry_for(snapshots.syncing())
    res = {"resource": "iscsi1"}
    assert value(r, "iscsi_ha_drbd_connection_state", **res, state="SyncSource") == 1
    assert value(r, "iscsi_ha_drbd_connection_state", **res, state="Connected") == 0
    assert value(r, "iscsi_ha_drbd_disk_state", **res, side="peer", state="Inconsistent") == 1
    assert value(r, "iscsi_ha_drbd_disk_state", **res, side="local", state="UpToDate") == 1
    assert value(r, "iscsi_ha_drbd_out_of_sync_bytes", **res) == 6 * 1024**3
    assert value(r, "iscsi_ha_drbd_sync_progress_ratio", **res) == pytest.approx(0.42)
    assert value(r, "iscsi_ha_drbd_sync_eta_seconds", **res) == 120


def test_split_brain():
    r = registry_for(snapshots.split_brain())
    res = {"resource": "iscsi1"}
    assert value(r, "iscsi_ha_drbd_split_brain", **res) == 1
    assert value(r, "iscsi_ha_drbd_connection_state", **res, state="StandAlone") == 1
    assert value(r, "iscsi_ha_drbd_peer_role", **res, role="Unknown") == 1
    assert value(r, "iscsi_ha_drbd_disk_state", **res, side="peer", state="DUnknown") == 1
    # Unknown while disconnected: no progress ratio invented.
    assert value(r, "iscsi_ha_drbd_sync_progress_ratio", **res) is None
    assert value(r, "iscsi_ha_drbd_out_of_sync_bytes", **res) is None
    assert value(r, "iscsi_ha_last_cycle_outcome", outcome="held") == 1
    assert value(r, "iscsi_ha_refusals") == 1


def test_unknown_pool_role_holds():
    r = registry_for(snapshots.unknown_pool())
    assert one_hot(r, "iscsi_ha_pool_role", ["master", "slave", "unknown"]) == {
        "master": 0,
        "slave": 0,
        "unknown": 1,
    }
    assert value(r, "iscsi_ha_desired_role", role="none") == 1
    assert value(r, "iscsi_ha_desired_role", role="primary") == 0
    assert value(r, "iscsi_ha_last_cycle_outcome", outcome="held") == 1
    assert value(r, "iscsi_ha_planned_actions") == 0
    assert value(r, "iscsi_ha_xenapi_reachable") == 0


def test_promoting_counts_the_planned_actions():
    r = registry_for(snapshots.promoting(resources=2))
    assert value(r, "iscsi_ha_planned_actions") == 5  # 2 promotes, serve, VIP, announce
    assert value(r, "iscsi_ha_sr_unattached_pbds") == 1
    assert value(r, "iscsi_ha_drbd_connection_state", resource="iscsi2", state="WFConnection") == 1


def test_manual_mode():
    since = time.time() - 7200
    r = registry_for(snapshots.master(manual=snapshots.manual_on("secondary", since=since)))
    assert value(r, "iscsi_ha_manual_mode") == 1
    assert value(r, "iscsi_ha_manual_mode_requested_role", role="secondary") == 1
    assert value(r, "iscsi_ha_manual_mode_requested_role", role="none") == 0
    assert value(r, "iscsi_ha_manual_mode_since_timestamp_seconds") == since


@pytest.mark.parametrize("builder", sorted(snapshots.ALL))
def test_every_enum_value_has_a_series_and_exactly_one_is_set(builder):
    snap = snapshots.ALL[builder](resources=3)
    r = registry_for(snap)
    for res in snap.last.observation.resources:
        labels = {"resource": res.name}
        for name, choices in (
            ("iscsi_ha_drbd_role", model.DRBD_ROLES),
            ("iscsi_ha_drbd_peer_role", model.DRBD_ROLES),
            ("iscsi_ha_drbd_connection_state", model.DRBD_CONNECTION_STATES),
        ):
            got = one_hot(r, name, choices, **labels)
            assert sum(got.values()) == 1, (name, got)
        for side in ("local", "peer"):
            got = one_hot(
                r, "iscsi_ha_drbd_disk_state", model.DRBD_DISK_STATES, **labels, side=side
            )
            assert sum(got.values()) == 1
    for name, choices in (
        ("iscsi_ha_pool_role", [p.value for p in model.PoolRole]),
        ("iscsi_ha_last_cycle_outcome", [o.value for o in model.Outcome]),
        ("iscsi_ha_desired_role", ["primary", "secondary", "none"]),
        ("iscsi_ha_manual_mode_requested_role", ["primary", "secondary", "none"]),
    ):
        assert sum(one_hot(r, name, choices).values()) == 1
    for result in ("ok", "held", "error"):
        assert value(r, "iscsi_ha_cycles_total", result=result) is not None
    # All DRBD 8.4 and 9 connection states: 27 of them, per resource.
    assert len(series(r, "iscsi_ha_drbd_connection_state")) == 3 * 27


def test_odd_resources_unknown_word_unconfigured_unreadable_no_quorum():
    r = registry_for(snapshots.odd_resources())
    # A word no list knows gets its own series, and the listed ones all read 0.
    assert value(r, "iscsi_ha_drbd_connection_state", resource="iscsi1", state="Congested") == 1
    got = one_hot(
        r, "iscsi_ha_drbd_connection_state", model.DRBD_CONNECTION_STATES, resource="iscsi1"
    )
    assert sum(got.values()) == 0
    # Not up: says so, and no state series that would pretend to know.
    assert value(r, "iscsi_ha_drbd_resource_configured", resource="iscsi2") == 0
    assert not [
        s for s in series(r, "iscsi_ha_drbd_connection_state") if s.labels["resource"] == "iscsi2"
    ]
    # Unreadable: the error, nothing else about it.
    assert value(r, "iscsi_ha_drbd_resource_error", resource="iscsi3") == 1
    assert value(r, "iscsi_ha_drbd_resource_configured", resource="iscsi3") is None
    assert value(r, "iscsi_ha_drbd_role", resource="iscsi3", role="Unknown") is None
    assert value(r, "iscsi_ha_observation_error", system="drbd") == 1
    assert value(r, "iscsi_ha_drbd_quorum", resource="iscsi4") == 0


def test_before_the_first_cycle_only_up_build_info_and_start_time():
    registry = CollectorRegistry()
    SnapshotCollector(lambda: None, registry, clock=lambda: 1234.5)
    assert exposed_names(registry) == BASE
    assert value(registry, "iscsi_ha_up") == 1
    assert value(registry, "iscsi_ha_build_info", version="0.1.0", drbd_version="unknown") == 1
    assert value(registry, "iscsi_ha_start_time_seconds") == 1234.5

    snap = snapshots.starting()
    r = registry_for(snap)
    assert exposed_names(r) == BASE
    assert value(r, "iscsi_ha_build_info", version="0.1.0", drbd_version="8.4.11") == 1
    assert value(r, "iscsi_ha_start_time_seconds") == snap.started


def test_a_cycle_that_raised_exports_its_outcome_and_counters_but_no_state():
    r = registry_for(snapshots.failed_cycle())
    assert value(r, "iscsi_ha_last_cycle_outcome", outcome="error") == 1
    assert value(r, "iscsi_ha_cycles_total", result="ok") == 1200
    names = exposed_names(r)
    assert "iscsi_ha_pool_role" not in names
    assert "iscsi_ha_drbd_role" not in names
    assert "iscsi_ha_desired_role" not in names


def test_a_bad_histogram_is_left_out_not_fatal():
    snap = snapshots.master()
    bad = model.HistogramData(buckets=(0.1, 1.0), counts=(1,), total=1.0, count=1)
    snap = snapshots.dataclasses.replace(
        snap, counters=snapshots.dataclasses.replace(snap.counters, cycle_duration=bad)
    )
    r = registry_for(snap)
    assert value(r, "iscsi_ha_cycle_duration_seconds_count") is None
    assert value(r, "iscsi_ha_target_serving") == 1


def test_help_says_values_are_as_of_the_last_cycle():
    r = registry_for(snapshots.master(manual=snapshots.manual_on("primary")))
    for name, fam in families(r).items():
        if name in ("iscsi_ha_up", "iscsi_ha_build", "iscsi_ha_start_time_seconds"):
            continue
        assert "last cycle" in fam.documentation, name


def all_snapshots():
    return [
        *(b() for b in snapshots.ALL.values()),
        snapshots.master(manual=snapshots.manual_on("secondary")),
        snapshots.odd_resources(),
        snapshots.failed_cycle(),
        snapshots.starting(),
        switched(),
        None,
    ]


def switched():
    return snapshots.dataclasses.replace(
        snapshots.master(), switchover_phases=(("check", 0.012), ("release", 0.08), ("total", 0.41))
    )


def test_the_last_switchover_is_exported_per_phase():
    r = registry_for(switched())
    assert value(r, "iscsi_ha_switchover_duration_seconds", phase="release") == 0.08
    assert value(r, "iscsi_ha_switchover_duration_seconds", phase="total") == 0.41
    # Before any switchover there is no series at all (not a misleading 0).
    assert (
        value(
            registry_for(snapshots.master()), "iscsi_ha_switchover_duration_seconds", phase="total"
        )
        is None
    )


def test_names_and_labels_are_those_of_the_table():
    kinds = {name: (kind, labels) for name, kind, labels in METRICS}
    seen = set()
    for snap in all_snapshots():
        r = registry_for(snap)
        for fam in r.collect():
            exposed = fam.name + (
                "_total" if fam.type == "counter" else "_info" if fam.type == "info" else ""
            )
            assert exposed in kinds, exposed
            kind, labels = kinds[exposed]
            # build_info is an info family: a gauge in the text format.
            assert (kind == "gauge") if fam.type == "info" else (fam.type == kind), exposed
            for s in fam.samples:
                extra = {"le"} if kind == "histogram" else set()
                assert set(s.labels) - extra == set(labels), (exposed, s.labels)
            seen.add(exposed)
    # Every documented metric is produced by some situation: no dead rows in the table.
    assert seen == NAMES


def test_every_family_carries_the_help_of_the_catalogue():
    # The catalogue is the one declaration (docs/metrics.md is generated from it): the collector
    # must not say anything else in HELP.
    helps = {m.name: m.help for m in catalogue.CATALOGUE}
    for snap in all_snapshots():
        for fam in registry_for(snap).collect():
            exposed = fam.name + (
                "_total" if fam.type == "counter" else "_info" if fam.type == "info" else ""
            )
            assert fam.documentation == helps[exposed], exposed


def test_describe_names_everything_without_reading_the_snapshot():
    def boom():
        raise AssertionError("describe() must not read the snapshot")

    c = SnapshotCollector(boom)
    described = {m.name for m in c.describe()}
    assert "iscsi_ha_drbd_connection_state" in described
    assert len(described) == len(METRICS)


def test_nothing_is_registered_on_the_global_registry():
    assert REGISTRY.get_sample_value("iscsi_ha_up") is None


def test_get_snapshot_is_read_once_per_scrape_and_families_are_reused():
    calls = []
    snap = snapshots.master()

    def get():
        calls.append(1)
        return snap

    registry = CollectorRegistry()
    SnapshotCollector(get, registry)
    first = list(registry.collect())
    assert len(calls) == 1
    second = list(registry.collect())
    assert len(calls) == 2
    assert all(a is b for a, b in zip(first, second))  # same snapshot: same families
    snap = snapshots.slave()
    third = list(registry.collect())
    assert value(registry, "iscsi_ha_pool_role", role="slave") == 1
    assert not any(a is b for a, b in zip(first, third) if a.name == "iscsi_ha_pool_role")


def test_accepts_an_object_with_get_or_a_callable():
    box = LatestSnapshot()
    registry = CollectorRegistry()
    SnapshotCollector(box, registry)
    assert value(registry, "iscsi_ha_pool_role", role="master") is None
    box.publish(snapshots.master())
    assert value(registry, "iscsi_ha_pool_role", role="master") == 1
    with pytest.raises(TypeError):
        SnapshotCollector(42)


def test_a_hung_cycle_does_not_block_collection():
    """The cycle holds its lock and hangs in a command; the collector still answers at once."""
    box = LatestSnapshot(snapshots.master())
    cycle_lock = threading.Lock()  # what a controller would hold during a cycle
    hung = threading.Event()
    release = threading.Event()

    def cycle():
        with cycle_lock:
            hung.set()
            release.wait(10)  # stands for a command that does not return
            box.publish(snapshots.slave())

    registry = CollectorRegistry()
    SnapshotCollector(box, registry)
    t = threading.Thread(target=cycle, daemon=True)
    t.start()
    try:
        assert hung.wait(5)
        start = time.monotonic()
        text = generate_latest(registry)
        assert time.monotonic() - start < 1.0
        assert b'iscsi_ha_pool_role{role="master"} 1.0' in text  # the previous cycle
        assert cycle_lock.locked()
    finally:
        release.set()
        t.join(5)
    assert value(registry, "iscsi_ha_pool_role", role="slave") == 1


# ---------------------------------------------------------------------------------------------
# The real promtool


PROMTOOL = shutil.which("promtool")


def promtool_check(text: bytes) -> None:
    proc = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    complaints = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 0 and not complaints.strip(), complaints


@pytest.mark.tools
@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
@pytest.mark.parametrize("index", range(len(all_snapshots())))
def test_promtool_check_metrics_finds_nothing(index):
    snap = all_snapshots()[index]
    text = generate_latest(registry_for(snap))
    assert text.startswith(b"# HELP")
    promtool_check(text)


@pytest.mark.tools
@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_promtool_would_complain_about_a_bad_exposition():
    # The check above can fail: promtool does object to a counter without _total.
    proc = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=b"# HELP x_count a counter\n# TYPE x_count counter\nx_count 1\n",
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode != 0 or (proc.stdout + proc.stderr).strip()


def test_unchanged_families_are_handed_out_again_changed_ones_rebuilt():
    box = LatestSnapshot(snapshots.master(resources=3))
    registry = CollectorRegistry()
    SnapshotCollector(box, registry)
    first = families(registry)
    box.publish(snapshots.master(resources=3))  # a new cycle, same states, new timestamps
    second = families(registry)
    for name in (
        "iscsi_ha_drbd_connection_state",
        "iscsi_ha_drbd_disk_state",
        "iscsi_ha_pool_role",
        "iscsi_ha_target_serving",
    ):
        assert second[name] is first[name], name
    assert (
        second["iscsi_ha_last_cycle_timestamp_seconds"]
        is not first["iscsi_ha_last_cycle_timestamp_seconds"]
    )
    box.publish(snapshots.syncing(resources=3))
    third = families(registry)
    assert third["iscsi_ha_drbd_connection_state"] is not first["iscsi_ha_drbd_connection_state"]
    assert (
        value(registry, "iscsi_ha_drbd_connection_state", resource="iscsi2", state="SyncSource")
        == 1
    )
    assert (
        value(registry, "iscsi_ha_drbd_connection_state", resource="iscsi2", state="Connected") == 0
    )
    box.publish(snapshots.master(resources=3))
    assert (
        value(registry, "iscsi_ha_drbd_connection_state", resource="iscsi2", state="Connected") == 1
    )


def test_promotion_blocked_reads_zero_per_resource_unless_held():
    # Healthy: one 0 series per resource (no reason label), so the paging rule's selector has
    # data to check; held: the reason at 1 and no 0 series for that resource.
    r = registry_for(snapshots.master(resources=2))
    assert value(r, "iscsi_ha_promotion_blocked", resource="iscsi1", reason="") == 0
    assert value(r, "iscsi_ha_promotion_blocked", resource="iscsi2", reason="") == 0
    snap = snapshots.promoting(resources=2)
    plan = dataclasses.replace(snap.last.plan, actions=(), blocked=(("iscsi1", "gap"),))
    held = dataclasses.replace(snap, last=dataclasses.replace(snap.last, plan=plan))
    r = registry_for(held)
    assert value(r, "iscsi_ha_promotion_blocked", resource="iscsi1", reason="gap") == 1
    assert value(r, "iscsi_ha_promotion_blocked", resource="iscsi1", reason="") is None
    assert value(r, "iscsi_ha_promotion_blocked", resource="iscsi2", reason="") == 0
