"""The data-safety audit: its parsers on real captures, its verdicts, its job and its metrics.

DRBD: ``drbdsetup show`` (with and without ``--show-defaults``) and ``drbdadm dump`` of real DRBD
8.4.11 in the VM lab (``tests/fixtures/drbd84-audit``, ``lab/vm/capture_audit.py``), ``drbdadm
dump`` of the non-default settings (unsafe, safe) and ``drbdsetup show`` of DRBD 9.2
(``tests/fixtures/drbd92``). LVM: real ``lvmconfig`` output for five filter settings. multipath:
XCP-ng's shipped ``multipath.conf``. The parsers are also fed damaged copies (Hypothesis): they
refuse with their own error, never anything else, and never hang.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional

import pytest
from fakes import FakeRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iscsi_ha.controller.audit import AuditJob, AuditSettings, assess
from iscsi_ha.controller.systems.drbd.config_show import (
    DrbdConfigError,
    drbd_safety,
    parse_conf,
)
from iscsi_ha.controller.systems.lvm import LvmParseError, judge_filters, parse_lvmconfig
from iscsi_ha.controller.systems.multipath import (
    MultipathParseError,
    parse_blacklists,
    unprotected,
)
from iscsi_ha.exporter.audit_collector import AuditCollector
from prometheus_client import CollectorRegistry

FIX = Path(__file__).parent / "fixtures"
AUDIT = FIX / "audit"
D84 = FIX / "drbd84-audit"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def frames(path: Path) -> Dict[str, str]:
    """The 8.4 capture format: ``$ command`` / ``(rc=N)`` / output, per command."""
    out: Dict[str, str] = {}
    for block in re.split(r"^\$ ", path.read_text(), flags=re.M)[1:]:
        cmd, _, rest = block.partition("\n")
        rest = re.sub(r"^(#.*\n)+", "", rest)  # a capture's comment lines (the input)
        rc, _, body = rest.partition("\n")
        assert re.fullmatch(r"\(rc=\d+\)", rc), (path, rc)
        out[cmd.strip()] = body
    return out


def drbd92_show() -> str:
    text = (FIX / "drbd92" / "02b-drbdsetup-show-node1.txt").read_text()
    return text.split("--- stdout\n", 1)[1].split("--- stderr", 1)[0]


def lvm(name: str) -> str:
    (body,) = frames(AUDIT / f"lvmconfig-{name}.txt").values()
    return body


# --------------------------------------------------------------------------------------------
# DRBD
# --------------------------------------------------------------------------------------------


def test_drbd92_defaults_protocol_c_no_discard_no_fencing():
    d = drbd_safety(drbd92_show(), "r0")
    assert d.protocol == "C"
    assert d.after_sb == (("0pri", "disconnect"), ("1pri", "disconnect"), ("2pri", "disconnect"))
    assert d.discarding == () and d.fencing == "dont-care" and not d.fenced
    assert d.devices == ("/dev/drbd0",) and d.disks == ("/dev/vda",)


def test_drbd84_lab_default_as_the_kernel_runs_it():
    f = frames(D84 / "audit-01-lab-default-node1.txt")
    d = drbd_safety(f["drbdsetup show r0"], "r0", f["drbdadm dump r0"])
    assert d.protocol == "C" and d.discarding == ()
    assert d.fencing == "dont-care" and d.fence_handler is False and not d.fenced
    assert d.devices == ("/dev/drbd0",) and d.disks == ("/dev/vda",)
    # --show-defaults prints every value (8.4: fencing inside the volume's disk section).
    full = drbd_safety(f["drbdsetup show --show-defaults r0"], "r0")
    assert (full.protocol, full.after_sb, full.fencing, full.devices, full.disks) == (
        d.protocol,
        d.after_sb,
        d.fencing,
        d.devices,
        d.disks,
    )
    assert "fencing         \tdont-care; # default" in f["drbdsetup show --show-defaults r0"]


def test_unsafe_configuration_from_drbdadm_dump():
    (dump,) = frames(D84 / "host-dump-unsafe.txt").values()
    d = drbd_safety(dump, "r0", dump)
    assert d.protocol == "A"
    assert dict(d.discarding) == {
        "0pri": "discard-least-changes",
        "1pri": "discard-secondary",
        "2pri": "violently-as0p",
    }
    assert not d.fenced and d.fence_handler is False
    assert d.devices == ("/dev/drbd0",) and d.disks == ("/dev/vda",)


def test_safe_configuration_from_drbdadm_dump():
    (dump,) = frames(D84 / "host-dump-safe.txt").values()
    d = drbd_safety(dump, "r0", dump)
    assert d.protocol == "C" and d.discarding == ()
    assert d.fencing == "resource-only" and d.fence_handler is True and d.fenced


def kernel_capture(tag: str, node: str = "node1") -> Dict[str, str]:
    return frames(D84 / f"audit-{tag}-{node}.txt")


def test_drbd84_unsafe_settings_as_the_kernel_runs_them():
    """Protocol A and discarding split-brain policies, loaded into real DRBD 8.4.11: ``drbdsetup
    show`` names only what differs from the defaults, and the audit reads it as the job does."""
    f = kernel_capture("02-unsafe")
    d = drbd_safety(f["drbdsetup show r0"], "r0", f["drbdadm dump r0"])
    assert d.protocol == "A"
    assert dict(d.discarding) == {
        "0pri": "discard-least-changes",
        "1pri": "discard-secondary",
        "2pri": "violently-as0p",
    }
    assert d.fencing == "dont-care" and d.fence_handler is False and not d.fenced
    assert d.devices == ("/dev/drbd0",) and d.disks == ("/dev/vda",)
    full = drbd_safety(f["drbdsetup show --show-defaults r0"], "r0")
    assert (full.protocol, full.after_sb, full.fencing) == (d.protocol, d.after_sb, d.fencing)
    # Same verdicts from the files (drbdadm dump) as from the kernel (drbdsetup show).
    from_files = drbd_safety(f["drbdadm dump r0"], "r0", f["drbdadm dump r0"])
    assert (from_files.protocol, from_files.discarding) == (d.protocol, d.discarding)


@pytest.mark.parametrize("node", ["node1", "node2"])
def test_drbd84_safe_settings_as_the_kernel_runs_them(node):
    """Fencing ``resource-only`` in the kernel (8.4: in the volume's disk section) and the
    fence-peer handler in the files (the kernel never sees handlers): fenced."""
    f = kernel_capture("03-safe", node)
    d = drbd_safety(f["drbdsetup show r0"], "r0", f["drbdadm dump r0"])
    assert d.protocol == "C" and d.discarding == ()
    assert d.fencing == "resource-only" and d.fence_handler is True and d.fenced
    # Without the dump the handler is unknown: fencing alone is not called safe.
    assert drbd_safety(f["drbdsetup show r0"], "r0").fence_handler is None
    assert "fence-peer" not in f["drbdsetup show --show-defaults r0"]


def test_the_job_on_real_drbd84_outputs_exports_each_finding():
    """The whole path on the kernel's captures: the commands the job runs, the findings it logs,
    the metrics the alerts read (IscsiHaDrbdNotProtocolC, ...SplitBrainPolicyDiscards,
    ...NoFencing fire on the unsafe host, none on the safe one)."""
    seen = {}
    for tag in ("02-unsafe", "03-safe"):
        f = kernel_capture(tag)
        runner = FakeRunner()
        runner.answer(["drbdsetup", "show", "r0"], stdout=f["drbdsetup show r0"])
        runner.answer(["drbdadm", "dump", "r0"], stdout=f["drbdadm dump r0"])
        runner.answer(["lvmconfig"], stdout=lvm("rejects-drbd-and-backing"))
        job = AuditJob(
            AuditSettings(resources=("r0",), multipath_conf="/nonexistent/multipath.conf"),
            runner,
            clock=lambda: 7.0,
        )
        result = job.run()
        reg = CollectorRegistry()
        AuditCollector(job.latest, reg)
        v = reg.get_sample_value
        seen[tag] = (
            [line for line in result.findings() if line.startswith("DRBD")],
            v("iscsi_ha_drbd_replication_protocol", {"resource": "r0", "protocol": "C"}),
            [
                v("iscsi_ha_drbd_split_brain_policy_discards", {"resource": "r0", "policy": p})
                for p in ("0pri", "1pri", "2pri")
            ],
            v("iscsi_ha_drbd_fencing", {"resource": "r0"}),
            v("iscsi_ha_audit_error", {"check": "drbd"}),
        )
    findings, proto_c, discards, fencing, error = seen["02-unsafe"]
    assert (proto_c, discards, fencing, error) == (0, [1, 1, 1], 0, 0)
    text = "\n".join(findings)
    assert "protocol A" in text and "discard-secondary" in text and "no fencing" in text
    assert seen["03-safe"] == ([], 1, [0, 0, 0], 1, 0)


def test_unknown_resource_and_broken_text_are_refused():
    with pytest.raises(DrbdConfigError, match="no resource 'r9'"):
        drbd_safety(drbd92_show(), "r9")
    for text in ("resource r0 {", "}", "resource r0 { net { protocol C; }", "{ a; }"):
        with pytest.raises(DrbdConfigError):
            parse_conf(text)
    with pytest.raises(DrbdConfigError, match="deeper than"):
        parse_conf("a {" * 40 + "}" * 40)


@SETTINGS
@given(st.data())
def test_damaged_drbd_output_is_refused_or_read(data):
    text = drbd92_show()
    how = data.draw(st.sampled_from(["truncate", "flip", "insert"]))
    if how == "truncate":
        text = text[: data.draw(st.integers(0, len(text)))]
    elif how == "flip":
        i = data.draw(st.integers(0, len(text) - 1))
        text = text[:i] + data.draw(st.sampled_from('{};"#x \n')) + text[i + 1 :]
    else:
        i = data.draw(st.integers(0, len(text)))
        text = text[:i] + data.draw(st.text(max_size=40)) + text[i:]
    try:
        drbd_safety(text, "r0")
    except DrbdConfigError as exc:
        assert str(exc)


# --------------------------------------------------------------------------------------------
# LVM
# --------------------------------------------------------------------------------------------

DEVICES = ["/dev/drbd0"]


@pytest.mark.parametrize(
    "fixture, backing, expected",
    [
        ("default", "/dev/sdb", {"/dev/drbd0": False, "/dev/sdb": False}),
        ("rejects-drbd-and-backing", "/dev/sdb", {"/dev/drbd0": True, "/dev/sdb": True}),
        ("rejects-drbd-only", "/dev/sdb", {"/dev/drbd0": True, "/dev/sdb": False}),
        ("xenserver-filter", "/dev/sdb", {"/dev/drbd0": False, "/dev/sdb": False}),
        ("single-string", "/dev/sdb", {"/dev/drbd0": True, "/dev/sdb": True}),
    ],
)
def test_lvm_filter_verdicts(fixture, backing, expected):
    verdicts = judge_filters(parse_lvmconfig(lvm(fixture)), DEVICES, [backing])
    assert {v.device: v.rejected for v in verdicts} == expected
    assert [v.kind for v in verdicts] == ["drbd", "backing"]


def test_lvm_first_match_wins_and_global_filter_counts():
    f = parse_lvmconfig('filter=["a|drbd|","r|.*|"]\nglobal_filter=["a|.*|"]\n')
    assert f.accepts("/dev/drbd0") and not f.accepts("/dev/sda")
    f = parse_lvmconfig('filter=["a|.*|"]\nglobal_filter=["r|^/dev/drbd|"]\n')
    assert not f.accepts("/dev/drbd0")


@SETTINGS
@given(st.text(max_size=300))
def test_lvm_parser_refuses_or_reads(text):
    try:
        parse_lvmconfig(text)
    except LvmParseError as exc:
        assert str(exc)


# --------------------------------------------------------------------------------------------
# multipath
# --------------------------------------------------------------------------------------------


def test_xcpng_multipath_conf_leaves_drbd_alone():
    bl = parse_blacklists([(AUDIT / "multipath-xcpng.conf").read_text()])
    assert "^drbd[0-9]*" in bl.devnodes and bl.exceptions == ()
    assert unprotected(bl, ["/dev/drbd0", "/dev/drbd12"]) == []


def test_multipath_without_the_drbd_line_takes_drbd():
    bl = parse_blacklists([(AUDIT / "multipath-xcpng-drbd-line-removed.conf").read_text()])
    assert unprotected(bl, ["/dev/drbd0"]) == ["drbd0"]


def test_multipath_exception_lets_drbd_back_in_and_conf_d_counts():
    base = (AUDIT / "multipath-xcpng.conf").read_text()
    extra = 'blacklist_exceptions {\n    devnode "^drbd1$"  # an operator\'s edit\n}\n'
    bl = parse_blacklists([base, extra])
    assert unprotected(bl, ["/dev/drbd0", "/dev/drbd1"]) == ["drbd1"]
    assert unprotected(None, ["/dev/drbd0"]) == []  # no multipath.conf at all


@SETTINGS
@given(st.data())
def test_damaged_multipath_conf_is_refused_or_read(data):
    text = (AUDIT / "multipath-xcpng.conf").read_text()
    i = data.draw(st.integers(0, len(text)))
    text = (
        text[:i]
        + data.draw(st.sampled_from(["", "{", "}", '"', "\n}\n"]))
        + text[i + data.draw(st.integers(0, 30)) :]
    )
    try:
        parse_blacklists([text])
    except MultipathParseError as exc:
        assert str(exc)


# --------------------------------------------------------------------------------------------
# The verdicts, the job and the metrics
# --------------------------------------------------------------------------------------------


def test_assess_and_render_an_unsafe_host():
    result = assess(
        ["r0"],
        1000.0,
        show={"r0": drbd92_show()},
        dump={"r0": None},
        lvmconfig=lvm("rejects-drbd-only"),
        multipath=[(AUDIT / "multipath-xcpng-drbd-line-removed.conf").read_text()],
        errors={},
    )
    text = "\n".join(result.findings())
    assert "DRBD r0: no fencing (fencing dont-care)" in text
    assert "the LVM filter does not reject /dev/vda (backing)" in text
    assert "multipath would take /dev/drbd0" in text
    reg = CollectorRegistry()
    AuditCollector(lambda: result, reg)
    v = reg.get_sample_value
    assert v("iscsi_ha_audit_timestamp_seconds") == 1000.0
    assert v("iscsi_ha_audit_error", {"check": "lvm"}) == 0
    assert v("iscsi_ha_drbd_replication_protocol", {"resource": "r0", "protocol": "C"}) == 1
    assert v("iscsi_ha_drbd_replication_protocol", {"resource": "r0", "protocol": "A"}) == 0
    assert v("iscsi_ha_drbd_split_brain_policy_discards", {"resource": "r0", "policy": "1pri"}) == 0
    assert v("iscsi_ha_drbd_fencing", {"resource": "r0"}) == 0
    assert v("iscsi_ha_lvm_filter_rejects", {"device": "/dev/drbd0", "kind": "drbd"}) == 1
    assert v("iscsi_ha_lvm_filter_rejects", {"device": "/dev/vda", "kind": "backing"}) == 0
    assert v("iscsi_ha_multipath_blacklists_drbd", {"device": "drbd0"}) == 0


def test_a_check_that_cannot_run_is_an_error_not_a_finding():
    result = assess(
        ["r0"],
        1.0,
        show={"r0": drbd92_show()},
        dump={"r0": None},
        lvmconfig=None,
        multipath=[],
        errors={"lvm": "`lvmconfig` rc 127: not found"},
    )
    assert not any("LVM" in f for f in result.findings())
    reg = CollectorRegistry()
    AuditCollector(lambda: result, reg)
    assert reg.get_sample_value("iscsi_ha_audit_error", {"check": "lvm"}) == 1
    assert (
        reg.get_sample_value(
            "iscsi_ha_lvm_filter_rejects", {"device": "/dev/drbd0", "kind": "drbd"}
        )
        is None
    )
    # No multipath.conf: nothing exported, nothing to fear.
    assert reg.get_sample_value("iscsi_ha_multipath_blacklists_drbd", {"device": "drbd0"}) is None


def test_job_runs_the_commands_and_survives_failures(tmp_path):
    runner = FakeRunner()
    runner.answer(["drbdsetup", "show", "r0"], stdout=drbd92_show())
    runner.answer(["drbdadm", "dump", "r0"], rc=10, stderr="no resources defined!")
    runner.answer(["drbdsetup", "show", "r1"], rc=10, stderr="r1: No such resource")
    runner.answer(["lvmconfig"], stdout=lvm("rejects-drbd-and-backing"))
    conf = tmp_path / "multipath.conf"
    conf.write_text((AUDIT / "multipath-xcpng.conf").read_text())
    job = AuditJob(
        AuditSettings(
            resources=("r0", "r1"),
            multipath_conf=str(conf),
            multipath_conf_dir=str(tmp_path / "conf.d"),
        ),
        runner,
        clock=lambda: 5.0,
    )
    assert job.latest() is None
    result = job.run()
    assert job.latest() is result
    assert (
        "lvmconfig",
        "--typeconfig",
        "full",
        "devices/filter",
        "devices/global_filter",
    ) in runner.calls
    assert [d.resource for d in result.drbd] == ["r0"]
    assert "r1" in result.errors["drbd"] and "No such resource" in result.errors["drbd"]
    assert result.findings() == ["DRBD r0: no fencing (fencing dont-care)"]
    assert result.multipath_configured and result.multipath_unprotected == ()


def test_settings_from_the_configuration():
    from iscsi_ha.controller.audit import settings_from_config
    from iscsi_ha.controller.config import parse_config

    base = {"resources": ["iscsi1"], "vip": {"address": "10.10.10.3/24"}}
    s = settings_from_config(parse_config(base))
    assert s is not None and s.interval == 300 and s.multipath_conf_dir == "/etc/multipath/conf.d"
    assert settings_from_config(parse_config({**base, "audit": {"enabled": False}})) is None
    s: Optional[AuditSettings] = settings_from_config(
        parse_config({**base, "audit": {"interval": 60, "lvmconfig": "/sbin/lvmconfig"}})
    )
    assert s is not None and (s.interval, s.lvmconfig) == (60, "/sbin/lvmconfig")
