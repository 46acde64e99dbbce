"""The backend-neutral target layer (controller/systems/target.py): the LUN identity each host
derives, the backend choice, and how the identity reaches the metrics and the status screen.

The backends themselves are tested on real captures: ``test_target.py`` (tgt), ``test_lio.py``
(LIO), and for real in the namespace lab (tgt) and the VM lab (both).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import snapshots
from iscsi_ha.controller import cli
from iscsi_ha.controller.config import Lun, load_config, parse_config
from iscsi_ha.controller.control import describe_snapshot
from iscsi_ha.controller.model import LunInfo
from iscsi_ha.controller.systems import target as layer
from iscsi_ha.controller.systems.lio import LioTarget
from iscsi_ha.controller.systems.tgt import Target as TgtTarget
from iscsi_ha.controller.systems.tgt import parse_targets_conf
from iscsi_ha.exporter.collector import SnapshotCollector
from prometheus_client import CollectorRegistry

IQN = "iqn.2024-01.org.iscsi-ha:storage"


# -- identity -----------------------------------------------------------------------------------


def test_identity_is_stable_and_a_function_of_iqn_and_lun_only():
    a = layer.lun_specs(IQN, [(1, "/dev/drbd/by-res/iscsi1/0")])[0]
    b = layer.lun_specs(IQN, [(1, "/dev/drbd1")])[0]  # another path: same identity
    assert (a.serial, a.scsi_id, a.wwn) == (b.serial, b.scsi_id, b.wwn)
    # Pinned value (a release must never change what an existing SR knows).
    assert a.serial == "6d7126665a1d0c1d30c462f0692b2e5b"
    assert a.wwn == "naa.60014056d7126665a1d0c1d30c462f06"
    other_lun = layer.lun_specs(IQN, [(2, "/dev/drbd2")])[0]
    other_iqn = layer.lun_specs(IQN + "x", [(1, "/dev/drbd1")])[0]
    assert len({a.serial, other_lun.serial, other_iqn.serial}) == 3
    assert len({a.wwn, other_lun.wwn, other_iqn.wwn}) == 3


def test_tgt_and_lio_present_the_same_naa():
    for n in range(1, 20):
        spec = layer.lun_specs(IQN, [(n, "/dev/x")])[0]
        assert layer.tgt_wwn(spec.scsi_id) == layer.lio_wwn(spec.serial) == spec.wwn
        assert len(spec.wwn) == len("naa.") + 32


def test_tgt_wwn_matches_what_tgt_presented():
    # Measured with iscsi-inq/INQUIRY on tgt 1.0.85 (VPD 0x83 NAA 6 designator).
    assert layer.tgt_wwn("IET     00010001") == "naa.60000000000000000e00000000010001"
    assert layer.tgt_wwn("ABCDEF0123") == "naa.6000000000000000000000abcdef0123"
    assert layer.tgt_wwn("xyz-12g34") == "naa.60000000000000000000000000012034"
    assert (
        layer.tgt_wwn("0014050123456789abcdef0123456789a") == "naa.614050123456789abcdef0123456789a"
    )


def test_pinned_values_win_and_the_rest_is_derived():
    pinned = Lun(1, "/dev/drbd1", serial="beaf11", scsi_id="IET     00010001")
    spec = layer.lun_specs(IQN, [pinned])[0]
    assert (spec.serial, spec.scsi_id, spec.vendor) == ("beaf11", "IET     00010001", "ISCSI-HA")
    assert spec.wwn == "naa.60000000000000000e00000000010001"
    only_serial = layer.lun_specs(IQN, [Lun(1, "/dev/drbd1", serial="abc123")])[0]
    assert only_serial.scsi_id == "001405abc123"


def test_config_accepts_identity_keys_and_names_bad_ones():
    base = {"resources": ["iscsi1"], "vip": {"address": "10.0.0.3/24"}}
    cfg = parse_config(
        {
            **base,
            "target": {
                "backend": "lio",
                "default_time2wait": 5,
                "luns": [
                    {
                        "lun": 1,
                        "path": "/dev/drbd1",
                        "serial": "beaf11",
                        "scsi_id": "IET     00010001",
                        "vendor": "IET",
                        "product": "VIRTUAL-DISK",
                    }
                ],
            },
        }
    )
    assert cfg.target.backend == "lio" and cfg.target.default_time2wait == 5
    assert cfg.target.luns[0].scsi_id == "IET     00010001"
    assert cfg.to_dict()["target"]["luns"][0]["serial"] == "beaf11"
    for bad, words in (
        ({"serial": "a,b"}, "target.luns[0].serial"),
        ({"vendor": "TOOLONGVENDOR"}, "target.luns[0].vendor"),
        ({"seriall": "x"}, "did you mean 'serial'"),
    ):
        with pytest.raises(Exception) as exc:
            parse_config({**base, "target": {"luns": [{"lun": 1, "path": "/dev/x", **bad}]}})
        assert words in str(exc.value)
    with pytest.raises(Exception) as exc:
        parse_config({**base, "target": {"backend": "scst"}})
    assert "target.backend" in str(exc.value)
    with pytest.raises(Exception) as exc:
        parse_config({**base, "target": {"default_time2wait": 4000}})
    assert "target.default_time2wait" in str(exc.value)


# -- backend choice -------------------------------------------------------------------------------


def test_backend_choice(tmp_path):
    configfs = tmp_path / "config"
    modules = tmp_path / "modules"
    release = "6.1.0-test"
    (modules / release).mkdir(parents=True)
    (modules / release / "modules.dep").write_text(
        "kernel/drivers/target/target_core_mod.ko: kernel/fs/configfs/configfs.ko\n"
    )
    assert layer.choose_backend("tgt", str(configfs)) == "tgt"
    assert layer.choose_backend("lio", str(configfs)) == "lio"
    assert layer.lio_installed(str(modules), release)
    assert not layer.lio_installed(str(tmp_path / "none"), release)
    # tgtd installed, LIO not loaded: a host that has tgt keeps it.
    assert layer.choose_backend("auto", str(configfs), tgtd="sh") == "tgt"
    (configfs / "target").mkdir(parents=True)
    assert layer.choose_backend("auto", str(configfs), tgtd="sh") == "lio"


def test_make_target_builds_the_chosen_backend():
    cfg = parse_config(
        {
            "resources": ["iscsi1"],
            "vip": {"address": "10.0.0.3/24"},
            "target": {"backend": "lio", "default_time2wait": 3},
        }
    )
    t = layer.make_target(cfg.target, runner=None)
    assert isinstance(t, LioTarget) and t.want.time2wait == 3
    assert t.specs == layer.lun_specs(cfg.target.iqn, cfg.target.luns)
    cfg = dataclasses.replace(cfg, target=dataclasses.replace(cfg.target, backend="tgt"))
    t = layer.make_target(cfg.target, runner=None)
    assert isinstance(t, TgtTarget) and t.default_time2wait == 3


def test_lio_refuses_an_address_policy_with_a_fix():
    t = LioTarget(runner=None, configfs="/nonexistent", initiator_address="10.0.0.0/24")
    res = t.serve()
    assert not res.ok and "initiator_address" in res.message and "backend: tgt" in res.message


def test_lio_missing_module_names_it_and_the_modprobe(tmp_path):
    failed = SimpleNamespace(ok=False, describe_failure=lambda: "rc 1: FATAL: Module not found")
    runner = SimpleNamespace(run=lambda argv, timeout=None: failed)
    res = LioTarget(runner, configfs=str(tmp_path)).start_daemon()
    assert not res.ok
    assert "kernel module target_core_iblock" in res.message
    assert "modprobe target_core_iblock" in res.message and "Module not found" in res.message
    obs = LioTarget(runner, configfs=str(tmp_path)).observe()
    assert not obs.daemon_running and obs.backend == "lio" and obs.lun_info  # the planned one


# -- metrics and status ---------------------------------------------------------------------------


def _with_luns(infos, backend="lio"):
    snap = snapshots.master()
    obs = snap.last.observation
    target = dataclasses.replace(obs.target, backend=backend, lun_info=tuple(infos))
    last = dataclasses.replace(snap.last, observation=dataclasses.replace(obs, target=target))
    return dataclasses.replace(snap, last=last)


def test_lun_info_and_write_cache_metrics():
    spec = layer.lun_specs(IQN, [(1, "/dev/drbd1")])[0]
    snap = _with_luns(
        [
            LunInfo(1, spec.serial, spec.wwn, "ISCSI-HA", "DRBD-LUN", False),
            LunInfo(2, "beaf12", "naa.60000000000000000e00000000010002", "", "", True),
        ]
    )
    registry = CollectorRegistry()
    SnapshotCollector(lambda: snap, registry)
    assert (
        registry.get_sample_value(
            "iscsi_ha_lun_info",
            {"lun": "1", "backend": "lio", "serial": spec.serial, "wwn": spec.wwn},
        )
        == 1.0
    )
    assert registry.get_sample_value("iscsi_ha_target_write_cache_enabled", {"lun": "1"}) == 0
    assert registry.get_sample_value("iscsi_ha_target_write_cache_enabled", {"lun": "2"}) == 1


def test_status_shows_each_luns_identity_and_warns_on_a_write_cache():
    spec = layer.lun_specs(IQN, [(1, "/dev/drbd1")])[0]
    snap = _with_luns(
        [
            LunInfo(1, spec.serial, spec.wwn, "ISCSI-HA", "DRBD-LUN", False),
            LunInfo(
                2, "beaf12", "naa.60000000000000000e00000000010002", "IET", "VIRTUAL-DISK", True
            ),
        ]
    )
    out = cli.render_status(describe_snapshot(snap, time.time()))
    assert (
        f"IDENTITY       LUN 1: serial {spec.serial}, {spec.wwn}, ISCSI-HA DRBD-LUN, "
        "write cache off"
    ) in out.splitlines()
    assert "WRITE CACHE ON" in out and "WARNING" in out


# -- import-conf --tgt-conf ---------------------------------------------------------------------

TGT_CONF = Path(__file__).parent / "fixtures" / "tgt" / "targets.conf"
LEGACY = Path(__file__).resolve().parent.parent / "examples" / "iscsi-ha.conf"
POOL_IQN = "iqn.2013-05.com.example.pool:iscsi-ha"


def test_targets_conf_is_read_as_tgt_admin_numbers_it():
    ours, scratch = parse_targets_conf(TGT_CONF.read_text())
    assert (ours.tid, ours.iqn, scratch.tid, scratch.iqn) == (
        1,
        POOL_IQN,
        2,
        "iqn.2013-05.com.example.pool:scratch",
    )
    assert [
        (lun.number, lun.path, lun.scsi_id, lun.scsi_sn, lun.vendor_id, lun.product_id)
        for lun in ours.luns
    ] == [
        (1, "/dev/drbd/by-res/iscsi1/0", "IET     00010001", "beaf11", "IET", "VIRTUAL-DISK"),
        (2, "/dev/drbd/by-res/iscsi2/0", "5001405a7c2e9d31", "iscsiha-lun2", "XENHA", "DRBD-DISK"),
        (3, "/dev/drbd/by-res/iscsi3/0", "IET     00010003", "beaf13", "IET", "VIRTUAL-DISK"),
    ]
    assert ours.initiator_addresses == ("10.10.10.0/24",)
    assert ours.ignored == ("line 27: incominguser",)
    assert scratch.luns[0].number == 1 and scratch.luns[0].scsi_sn == "beaf21"


def test_import_conf_carries_the_identity_over(tmp_path, capsys):
    out = tmp_path / "iscsi-ha.yaml"
    code = cli.main(["import-conf", str(LEGACY), "--tgt-conf", str(TGT_CONF), "-o", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert "incominguser not carried over" in err and "scratch" in err
    cfg = load_config(str(out))
    assert cfg.target.iqn == POOL_IQN and cfg.target.initiator_address == "10.10.10.0/24"
    assert cfg.target.default_time2wait == 5
    specs = layer.lun_specs(cfg.target.iqn, cfg.target.luns)
    assert [(s.number, s.serial, s.scsi_id, s.vendor, s.product) for s in specs] == [
        (1, "beaf11", "IET     00010001", "IET", "VIRTUAL-DISK"),
        (2, "iscsiha-lun2", "5001405a7c2e9d31", "XENHA", "DRBD-DISK"),
        (3, "beaf13", "IET     00010003", "IET", "VIRTUAL-DISK"),
    ]
    # The NAA the SR knows (tgt's, from scsi_id) is what the imported config presents on tgt.
    assert specs[0].wwn == "naa.60000000000000000e00000000010001"


def test_import_conf_names_what_is_wrong(tmp_path, capsys):
    bad = tmp_path / "targets.conf"
    bad.write_text("<target iqn.2013-05.com.example:x>\n  backing-store /dev/drbd1\n")
    code = cli.main(["import-conf", str(LEGACY), "--tgt-conf", str(bad)])
    _, err = capsys.readouterr()
    assert code == 2 and str(bad) in err and "is not closed" in err
    code = cli.main(["import-conf", str(LEGACY), "--tgt-conf", str(TGT_CONF), "--iqn", "iqn.x:y"])
    _, err = capsys.readouterr()
    assert code == 2 and "name one with --iqn" in err and POOL_IQN in err
