"""The tgt adapter against what a real tgtd 1.0.85 printed (tests/fixtures/tgt, made by capture.sh).

``parse_show`` is checked on every capture; the ``Target`` class runs on the FakeRunner, answered
with those captures and with tgtadm's real refusals (``errors.txt``: rc and words as tgtadm gave
them). What the real daemon does with the same calls is in ``test_target_vip_real.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple

import pytest
from fakes import FakeRunner, result
from iscsi_ha.controller.model import LunInfo, TargetObservation
from iscsi_ha.controller.systems import tgt as target_mod
from iscsi_ha.controller.systems.runner import CommandResult
from iscsi_ha.controller.systems.tgt import (
    Target,
    TgtLun,
    TgtParseError,
    find_tgtd_pids,
    parse_show,
)

TGT = Path(__file__).parent / "fixtures" / "tgt"
IQN = "iqn.2024-01.org.iscsi-ha:storage"
DIR = "/tmp/iscsi-ha-fixtures"  # where capture.sh kept the backing files
LUN1 = f"{DIR}/lun1.img"
PORT = 7
ADM = ("tgtadm", "-C", str(PORT), "--lld", "iscsi")
SHOW = ADM + ("--mode", "target", "--op", "show")


def fixture(name: str) -> str:
    # As the runner hands it over: decoded with replacement (tgt prints clients' bytes raw).
    return (TGT / name).read_bytes().decode(errors="replace")


def load_errors() -> List[Tuple[str, int, str]]:
    """errors.txt: ``$ command`` / ``rc=N`` / ``--- stdout`` / ``--- stderr`` / ``=== end``."""
    out = []
    lines = fixture("errors.txt").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("$ "):
            rc = int(lines[i + 1].split("=", 1)[1])
            j = lines.index("--- stderr", i) + 1
            k = lines.index("=== end", j)
            out.append((lines[i][2:], rc, "\n".join(lines[j:k]) + "\n"))
            i = k
        i += 1
    return out


ERRORS = load_errors()


def refusal(command: str, words: str) -> Tuple[int, str]:
    """The real (rc, stderr) tgtadm gave for ``tgtadm -C N --lld iscsi COMMAND``, saying WORDS."""
    for cmd, rc, err in ERRORS:
        if cmd == f"tgtadm -C N --lld iscsi {command}" and words in err:
            return rc, err
    raise KeyError(f"{command}: {words}")


SHOW_CMD = "--mode target --op show"
NOT_RUNNING = refusal(SHOW_CMD, "Transport endpoint is not connected")
FORCE_DELETE = "--mode target --op delete --force --tid 1"
TARGET_ABSENT = refusal(FORCE_DELETE, "can't find the target")
LUN_BUSY = refusal(FORCE_DELETE, "this logical unit is still active")
INVALID = refusal(
    f"--mode logicalunit --op new --tid 1 --lun 2 --backing-store {DIR}/missing.img",
    "invalid request",
)
ACL_EXISTS = refusal("--mode target --op bind --tid 1 --initiator-address ALL", "already exists")
SYSTEM_BUSY = refusal("--mode system --op delete", "invalid request")
IQN_TAKEN = refusal(f"--mode target --op new --tid 2 --targetname {IQN}", "already exists")


def test_refusals_are_rc_22_except_no_daemon():
    assert NOT_RUNNING[0] == 107
    assert {r[0] for r in (TARGET_ABSENT, LUN_BUSY, INVALID, ACL_EXISTS, SYSTEM_BUSY)} == {22}


def make(fake: FakeRunner, **kw) -> Target:
    kw.setdefault("control_port", PORT)
    kw.setdefault("luns", ((1, LUN1),))
    return Target(fake, **kw)


def answer(fake: FakeRunner, tail: Tuple[str, ...], rc_err: Tuple[int, str]) -> None:
    fake.answer(ADM + tail, rc=rc_err[0], stderr=rc_err[1])


def sequence(fake: FakeRunner, prefix: Tuple[str, ...], answers: List[CommandResult]) -> None:
    """Answer successive calls with ``answers`` in turn; the last one repeats."""
    left = list(answers)

    def next_answer(argv: Tuple[str, ...]) -> CommandResult:
        return left.pop(0) if len(left) > 1 else left[0]

    fake.answer_with(prefix, next_answer)


# --------------------------------------------------------------------------------------------
# parse_show on the real captures
# --------------------------------------------------------------------------------------------

EXPECTED = {
    # file: [(tid, name, [(lun, path, size_mb)], acl, sessions)]
    "empty-daemon.txt": [],
    "empty-after-force-delete.txt": [],
    "target-no-luns.txt": [(1, IQN, [(0, None, 0)], (), 0)],
    "target-1-lun-unbound.txt": [(1, IQN, [(0, None, 0), (1, LUN1, 67)], (), 0)],
    "target-1-lun.txt": [(1, IQN, [(0, None, 0), (1, LUN1, 67)], ("ALL",), 0)],
    "target-initiator-bound.txt": [(1, IQN, [(0, None, 0), (1, LUN1, 67)], ("10.99.0.10",), 0)],
    "target-3-luns.txt": [
        (
            1,
            IQN,
            [
                (0, None, 0),
                (1, LUN1, 67),
                (2, f"{DIR}/lun2.img", 1074),
                (3, f"{DIR}/lun3.img", 1000),
            ],
            ("ALL",),
            0,
        ),
    ],
    "target-session.txt": [(1, IQN, [(0, None, 0), (1, LUN1, 67)], ("ALL",), 1)],
    "two-targets.txt": [
        (1, IQN, [(0, None, 0), (1, LUN1, 67)], ("ALL",), 0),
        (2, "iqn.2024-01.org.example:other", [(0, None, 0), (1, f"{DIR}/other.img", 17)], (), 0),
    ],
    # Initiators that chose their name/alias to fool the parser (capture-hostile.sh): the client's
    # text is data, the target reads as what tgt really holds.
    "hostile-alias-target-header.txt": [(1, IQN, [(0, None, 0), (1, LUN1, 8)], ("ALL",), 1)],
    "hostile-alias-unknown-line.txt": [(1, IQN, [(0, None, 0), (1, LUN1, 8)], ("ALL",), 1)],
    "hostile-alias-forged-sections.txt": [(1, IQN, [(0, None, 0), (1, LUN1, 8)], ("ALL",), 2)],
    "hostile-name.txt": [(1, IQN, [(0, None, 0), (1, LUN1, 8)], ("ALL",), 1)],
    "target-1-lun-pinned.txt": [(1, IQN, [(0, None, 0), (1, LUN1, 8)], ("ALL",), 0)],
}


def test_hostile_captures_really_carry_the_forged_lines():
    # Guards the fixtures themselves: without the grammar these would read differently.
    header = fixture("hostile-alias-target-header.txt")
    assert "\nTarget 1: iqn.2024-01.org.iscsi-ha:fake\n" in header
    assert "\nbogus line\n" in fixture("hostile-alias-unknown-line.txt")
    raw = (TGT / "hostile-alias-unknown-line.txt").read_bytes()
    assert b"\xff\xfe" in raw  # tgt printed the non-UTF-8 bytes raw
    forged = fixture("hostile-alias-forged-sections.txt")
    assert "/dev/evil" in forged and "\nTarget 2: iqn.fake:two" in forged
    assert "\nTarget 3: iqn.x:y alias: a\n" in fixture("hostile-name.txt")


def test_hostile_text_decoded_with_replacement_still_parses():
    # The runner decodes with replacement: U+FFFD in the client's text changes nothing.
    text = (TGT / "hostile-alias-unknown-line.txt").read_bytes().decode(errors="replace")
    assert "\ufffd" in text
    (tgt,) = parse_show(text)
    assert (tgt.tid, tgt.name, tgt.sessions, tgt.acl) == (1, IQN, 1, ("ALL",))
    assert tgt.lun(1) == parse_show(fixture("target-1-lun-pinned.txt"))[0].lun(1)


@pytest.mark.parametrize(
    "name",
    [
        "hostile-alias-target-header.txt",
        "hostile-alias-unknown-line.txt",
        "hostile-alias-forged-sections.txt",
        "hostile-name.txt",
    ],
)
def test_observe_serves_despite_hostile_initiators(name):
    # Issue 16: an alias "x\nTarget 1: ..." made the target look not served; an unknown line
    # made the controller hold. Both are the client's text now.
    fake = FakeRunner()
    fake.answer(SHOW, stdout=(TGT / name).read_bytes().decode(errors="replace"))
    obs = make(fake, iqn=IQN).observe()
    assert obs.error is None and obs.serving and obs.target_present, obs
    assert obs.luns == 1 and obs.sessions == EXPECTED[name][0][4]


def test_the_pinned_capture_holds_the_derived_identity():
    # capture-hostile.sh pinned these values by hand: the derivation must still give them.
    spec = make(FakeRunner(), iqn=IQN).specs[0]
    lun = parse_show(fixture("target-1-lun-pinned.txt"))[0].lun(1)
    assert (lun.scsi_id, lun.scsi_sn, lun.flags) == (spec.scsi_id, spec.serial, "sync")
    assert not lun.write_cache
    assert parse_show(fixture("target-1-lun.txt"))[0].lun(1).write_cache  # no sync: cached


def test_every_capture_has_an_expectation():
    shows = {p.name for p in TGT.glob("*.txt")} - {"errors.txt", "target-1-params.txt"}
    assert shows == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parse_show_real_captures(name):
    targets = parse_show(fixture(name))
    got = [
        (t.tid, t.name, [(lun.number, lun.path, lun.size_mb) for lun in t.luns], t.acl, t.sessions)
        for t in targets
    ]
    assert got == EXPECTED[name]


def test_parse_show_lun_types_and_data_luns():
    (tgt,) = parse_show(fixture("target-3-luns.txt"))
    assert tgt.lun(0) == TgtLun(0, None, 0, "controller", "IET     00010000", "beaf10", "")
    assert [lun.number for lun in tgt.data_luns] == [1, 2, 3]
    assert {lun.type for lun in tgt.data_luns} == {"disk"}
    assert tgt.lun(4) is None


def test_parse_show_tolerates_unknown_lines_and_sections():
    text = fixture("target-session.txt")
    # A newer tgt might add keys, sections and nested detail: none of it may change the reading.
    text = text.replace(
        "    LUN information:\n",
        "    Portal information:\n        10.99.0.3:3260\n    LUN information:\n",
    )
    text = text.replace(
        "            Online: Yes\n",
        "            Online: Yes\n            Wibble: 3\n                deep: x\n",
    )
    assert text.count("\n") == fixture("target-session.txt").count("\n") + 6
    assert parse_show(text) == parse_show(fixture("target-session.txt"))


@pytest.mark.parametrize(
    "text",
    [
        "tgtadm: something new went wrong\n",
        "Target one: iqn.x\n",
        "        LUN: 1\n",
        fixture("target-1-lun.txt").replace("        LUN: 1\n", "        LUN: one\n"),
    ],
)
def test_parse_show_refuses_what_it_cannot_read(text):
    with pytest.raises(TgtParseError):
        parse_show(text)


# --------------------------------------------------------------------------------------------
# observe
# --------------------------------------------------------------------------------------------


def test_observe_daemon_not_running_is_not_an_error():
    fake = FakeRunner()
    answer(fake, ("--mode", "target", "--op", "show"), NOT_RUNNING)
    obs = make(fake).observe()
    assert obs == TargetObservation(daemon_running=False, backend="tgt", lun_info=obs.lun_info)
    # Not served here: the identity it will present, so both hosts' can be compared any time.
    spec = make(fake).specs[0]
    assert [(i.number, i.serial, i.wwn, i.write_cache) for i in obs.lun_info] == [
        (1, spec.serial, spec.wwn, None)
    ]


def test_observe_empty_daemon():
    fake = FakeRunner()
    fake.answer(SHOW, stdout=fixture("empty-daemon.txt"))
    obs = make(fake).observe()
    assert obs == TargetObservation(
        daemon_running=True,
        target_present=False,
        serving=False,
        backend="tgt",
        lun_info=obs.lun_info,
    )
    assert len(obs.lun_info) == 1


def test_observe_serving():
    fake = FakeRunner()
    fake.answer(SHOW, stdout=fixture("target-1-lun-pinned.txt"))
    obs = make(fake).observe()
    spec = make(fake).specs[0]
    info = LunInfo(1, spec.serial, spec.wwn, "ISCSI-HA", "DRBD-LUN", write_cache=False)
    assert obs == TargetObservation(
        True, True, True, luns=1, sessions=0, backend="tgt", lun_info=(info,)
    )
    assert spec.wwn == "naa.60014056d7126665a1d0c1d30c462f06"


def test_observe_write_cache_or_foreign_identity_is_not_serving():
    # tgt's defaults: no O_SYNC and its own "IET 00010001"/"beaf11" identity: to be corrected.
    fake = FakeRunner()
    fake.answer(SHOW, stdout=fixture("target-1-lun.txt"))
    obs = make(fake).observe()
    assert obs.target_present and not obs.serving
    assert obs.lun_info[0].write_cache is True and obs.lun_info[0].serial == "beaf11"
    assert obs.lun_info[0].wwn == "naa.60000000000000000e00000000010001"  # measured: VPD 0x83
    assert fake.calls == [SHOW]


def test_observe_counts_sessions():
    fake = FakeRunner()
    fake.answer(SHOW, stdout=fixture("target-session.txt"))
    obs = make(fake).observe()
    assert obs.target_present and obs.sessions == 1


@pytest.mark.parametrize(
    "name,kw",
    [
        ("target-no-luns.txt", {}),  # LUN missing
        ("target-1-lun-unbound.txt", {}),  # no initiator binding
        ("target-initiator-bound.txt", {}),  # bound to another initiator than ALL
        ("target-1-lun.txt", {"luns": ((1, "/dev/drbd/by-res/iscsi1/0"),)}),  # wrong backing
        ("target-1-lun.txt", {"luns": ((1, LUN1), (2, f"{DIR}/lun2.img"))}),  # LUN 2 missing
        ("target-1-lun.txt", {"iqn": "iqn.2024-01.org.example:renamed"}),  # tid under another IQN
    ],
)
def test_observe_partial_target_is_present_but_not_serving(name, kw):
    fake = FakeRunner()
    fake.answer(SHOW, stdout=fixture(name))
    obs = make(fake, **kw).observe()
    assert obs.daemon_running and obs.target_present and not obs.serving


def test_observe_other_tid_is_not_ours():
    fake = FakeRunner()
    fake.answer(SHOW, stdout=fixture("two-targets.txt"))
    obs = make(fake, tid=3).observe()
    assert obs.daemon_running and not obs.target_present


def test_observe_three_luns_with_initiator_address():
    fake = FakeRunner()
    fake.answer(SHOW, stdout=fixture("target-3-luns.txt"))
    luns = ((1, LUN1), (2, f"{DIR}/lun2.img"), (3, f"{DIR}/lun3.img"))
    obs = make(fake, luns=luns).observe()
    assert obs.luns == 3 and [i.number for i in obs.lun_info] == [1, 2, 3]
    fake.answer(SHOW, stdout=fixture("target-initiator-bound.txt"))
    obs = make(fake, initiator_address="10.99.0.10").observe()
    assert obs.target_present and obs.error is None


def test_observe_unreadable_output_is_an_error_quoting_it():
    fake = FakeRunner()
    fake.answer(SHOW, stdout="Ziel 1: iqn.x\n")
    obs = make(fake).observe()
    assert obs.error and "Ziel 1: iqn.x" in obs.error and "tgtadm -C 7" in obs.error
    assert not obs.serving


def test_observe_failure_and_timeout_are_errors():
    fake = FakeRunner()
    fake.answer(SHOW, rc=1, stderr="tgtadm: out of memory\n")
    assert "out of memory" in make(fake).observe().error
    fake.answer_with(SHOW, lambda argv: CommandResult(argv, 124, "", "", 10.0, True))
    assert "timed out" in make(fake).observe().error


# --------------------------------------------------------------------------------------------
# serve / stop_serving
# --------------------------------------------------------------------------------------------


def test_serve_on_empty_daemon_creates_everything_in_order():
    fake = FakeRunner()
    fake.answer(SHOW, stdout="")
    fake.answer(ADM + ("--mode", "target", "--op", "new"))
    fake.answer(ADM + ("--mode", "target", "--op", "update"))
    fake.answer(ADM + ("--mode", "logicalunit", "--op", "new"))
    fake.answer(ADM + ("--mode", "logicalunit", "--op", "update"))
    fake.answer(ADM + ("--mode", "target", "--op", "bind"))
    target = make(fake, luns=((1, LUN1), (2, "/dev/drbd/by-res/iscsi2/0")))
    res = target.serve()
    assert res.ok, res.message
    s1, s2 = target.specs
    assert fake.calls == [
        SHOW,
        ADM + ("--mode", "target", "--op", "new", "--tid", "1", "--targetname", IQN),
        ADM
        + (
            "--mode",
            "target",
            "--op",
            "update",
            "--tid",
            "1",
            "--name",
            "DefaultTime2Wait",
            "--value",
            "2",
        ),
        ADM
        + (
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            "1",
            "--lun",
            "1",
            "--backing-store",
            LUN1,
            "--bsoflags",
            "sync",  # writes complete only once DRBD has them
        ),
        ADM
        + (
            "--mode",
            "logicalunit",
            "--op",
            "update",
            "--tid",
            "1",
            "--lun",
            "1",
            "--params",
            f"scsi_id={s1.scsi_id},scsi_sn={s1.serial},vendor_id=ISCSI-HA,product_id=DRBD-LUN",
        ),
        ADM
        + (
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            "1",
            "--lun",
            "2",
            "--backing-store",
            "/dev/drbd/by-res/iscsi2/0",
            "--bsoflags",
            "sync",  # writes complete only once DRBD has them
        ),
        ADM
        + (
            "--mode",
            "logicalunit",
            "--op",
            "update",
            "--tid",
            "1",
            "--lun",
            "2",
            "--params",
            f"scsi_id={s2.scsi_id},scsi_sn={s2.serial},vendor_id=ISCSI-HA,product_id=DRBD-LUN",
        ),
        ADM + ("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL"),
    ]
    assert s1.serial != s2.serial and s1.wwn != s2.wwn
    assert "created target 1" in res.message and "bound ALL" in res.message


def test_serve_when_complete_only_looks():
    fake = FakeRunner()
    fake.answer(SHOW, stdout=fixture("target-1-lun-pinned.txt"))
    res = make(fake).serve()
    assert res.ok and "already in place" in res.message
    assert fake.calls == [SHOW]


def test_serve_completes_only_the_missing_parts():
    fake = FakeRunner()
    fake.answer(SHOW, stdout=fixture("target-no-luns.txt"))
    fake.answer(ADM + ("--mode", "logicalunit", "--op", "new"))
    fake.answer(ADM + ("--mode", "logicalunit", "--op", "update"))
    fake.answer(ADM + ("--mode", "target", "--op", "bind"))
    assert make(fake).serve().ok
    assert [c[5:9] for c in fake.calls[1:]] == [
        ("--mode", "logicalunit", "--op", "new"),
        ("--mode", "logicalunit", "--op", "update"),
        ("--mode", "target", "--op", "bind"),
    ]


def test_serve_pins_the_identity_of_a_lun_in_place():
    fake = FakeRunner()
    fake.answer(
        SHOW,
        stdout=fixture("target-1-lun-pinned.txt").replace(
            "SCSI SN: 6d7126665a1d0c1d30c462f0692b2e5b", "SCSI SN: beaf11"
        ),
    )
    fake.answer(ADM + ("--mode", "logicalunit", "--op", "update"))
    res = make(fake).serve()
    assert res.ok and "pinned LUN 1's identity" in res.message
    assert [c[5:9] for c in fake.calls[1:]] == [("--mode", "logicalunit", "--op", "update")]


def test_serve_replaces_a_lun_whose_write_cache_is_on():
    # tgt cannot change --bsoflags of a live LUN: the controller re-adds it with O_SYNC.
    fake = FakeRunner()
    fake.answer(SHOW, stdout=fixture("target-1-lun.txt"))
    for op in ("delete", "new", "update"):
        fake.answer(ADM + ("--mode", "logicalunit", "--op", op))
    res = make(fake).serve()
    assert res.ok, res.message
    assert [c[8] for c in fake.calls[1:]] == ["delete", "new", "update"]


def test_serve_replaces_a_lun_with_the_wrong_backing_store():
    fake = FakeRunner()
    fake.answer(SHOW, stdout=fixture("target-1-lun.txt"))
    fake.answer(ADM + ("--mode", "logicalunit", "--op", "delete"))
    fake.answer(ADM + ("--mode", "logicalunit", "--op", "new"))
    fake.answer(ADM + ("--mode", "logicalunit", "--op", "update"))
    res = make(fake, luns=((1, "/dev/drbd/by-res/iscsi1/0"),)).serve()
    assert res.ok and f"removed LUN 1 ({LUN1})" in res.message
    assert fake.calls[1:3] == [
        ADM + ("--mode", "logicalunit", "--op", "delete", "--tid", "1", "--lun", "1"),
        ADM
        + (
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            "1",
            "--lun",
            "1",
            "--backing-store",
            "/dev/drbd/by-res/iscsi1/0",
            "--bsoflags",
            "sync",  # writes complete only once DRBD has them
        ),
    ]


def test_serve_rebuilds_our_tid_under_another_iqn():
    fake = FakeRunner()
    fake.answer(SHOW, stdout=fixture("target-1-lun.txt"))
    fake.answer(ADM + ("--mode", "target", "--op", "delete"))
    fake.answer(ADM + ("--mode", "target", "--op", "new"))
    fake.answer(ADM + ("--mode", "target", "--op", "update"))
    fake.answer(ADM + ("--mode", "logicalunit", "--op", "new"))
    fake.answer(ADM + ("--mode", "logicalunit", "--op", "update"))
    fake.answer(ADM + ("--mode", "target", "--op", "bind"))
    new_iqn = "iqn.2024-01.org.example:renamed"
    res = make(fake, iqn=new_iqn).serve()
    assert res.ok, res.message
    assert fake.calls[1] == ADM + ("--mode", "target", "--op", "delete", "--force", "--tid", "1")
    assert fake.calls[2][-1] == new_iqn


def test_serve_iqn_taken_by_another_tid_is_reported():
    fake = FakeRunner()
    fake.answer(SHOW, stdout=fixture("two-targets.txt"))
    answer(fake, ("--mode", "target", "--op", "new"), IQN_TAKEN)
    res = make(fake, tid=5).serve()
    assert not res.ok
    assert "already exists as target 1, not 5" in res.message
    assert "this target already exists" in res.message


def test_serve_bad_backing_store_fails_with_tgt_words_and_path():
    fake = FakeRunner()
    fake.answer(SHOW, stdout=fixture("target-no-luns.txt"))
    answer(fake, ("--mode", "logicalunit", "--op", "new"), INVALID)
    res = make(fake, luns=((1, "/dev/drbd/by-res/iscsi1/0"),)).serve()
    assert not res.ok
    assert "/dev/drbd/by-res/iscsi1/0" in res.message and "invalid request" in res.message
    assert not fake.ran(*ADM, "--mode", "target", "--op", "bind")  # stops at the first failure


def test_serve_binding_that_appeared_meanwhile_is_fine():
    fake = FakeRunner()
    fake.answer(
        SHOW,
        stdout=fixture("target-1-lun-pinned.txt").replace(
            "    ACL information:\n        ALL\n", "    ACL information:\n"
        ),
    )
    answer(fake, ("--mode", "target", "--op", "bind"), ACL_EXISTS)
    assert make(fake).serve().ok


def test_serve_without_daemon_fails():
    fake = FakeRunner()
    answer(fake, ("--mode", "target", "--op", "show"), NOT_RUNNING)
    res = make(fake).serve()
    assert not res.ok and "not running" in res.message and "control port 7" in res.message
    assert fake.calls == [SHOW]


def test_stop_serving_deletes_with_force():
    fake = FakeRunner()
    fake.answer(ADM + ("--mode", "target", "--op", "delete"))
    assert make(fake).stop_serving().ok
    assert fake.calls == [ADM + ("--mode", "target", "--op", "delete", "--force", "--tid", "1")]


@pytest.mark.parametrize("answer_with", [TARGET_ABSENT, NOT_RUNNING])
def test_stop_serving_absent_target_or_daemon_is_success(answer_with):
    fake = FakeRunner()
    answer(fake, ("--mode", "target", "--op", "delete"), answer_with)
    assert make(fake).stop_serving().ok
    assert len(fake.calls) == 1


def test_stop_serving_retries_while_commands_are_in_flight():
    fake = FakeRunner()
    busy = result(SHOW, LUN_BUSY[0], stderr=LUN_BUSY[1])
    sequence(fake, ADM + ("--mode", "target", "--op", "delete"), [busy, busy, busy, result(SHOW)])
    res = make(fake).stop_serving()
    assert res.ok, res.message
    assert len(fake.calls) == 4


def test_stop_serving_gives_up_when_always_busy(monkeypatch):
    monkeypatch.setattr(target_mod, "BUSY_TIMEOUT", 0.05)
    fake = FakeRunner()
    answer(fake, ("--mode", "target", "--op", "delete"), LUN_BUSY)
    res = make(fake).stop_serving()
    assert not res.ok and "still active" in res.message
    assert 2 <= len(fake.calls) <= 20


def test_every_tgtadm_call_carries_the_control_port():
    fake = FakeRunner()
    fake.answer(("tgtadm",))
    t = make(fake, control_port=12)
    t.observe()
    t.serve()
    t.stop_serving()
    assert fake.calls and all(c[:3] == ("tgtadm", "-C", "12") for c in fake.calls)


# --------------------------------------------------------------------------------------------
# the daemon
# --------------------------------------------------------------------------------------------


def fake_proc(root: Path, pid: int, argv: List[str], state: str = "S") -> None:
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "stat").write_text(f"{pid} ({os.path.basename(argv[0])[:15]}) {state} 1 {pid} {pid} 0\n")


def test_find_tgtd_pids_reads_cmdline_and_skips_zombies(tmp_path):
    fake_proc(tmp_path, 100, ["tgtd", "-f", "-C", "7"])
    fake_proc(tmp_path, 101, ["/usr/sbin/tgtd", "-f", "-C", "8"])
    fake_proc(tmp_path, 102, ["/usr/sbin/tgtd", "-f", "--control-port=7"])
    fake_proc(tmp_path, 103, ["tgtd", "-f", "-C", "7"], state="Z")
    fake_proc(tmp_path, 104, ["python3", "tgtd", "-C", "7"])
    fake_proc(tmp_path, 105, ["/usr/sbin/tgtd"])  # default port 0
    (tmp_path / "self").mkdir()
    assert find_tgtd_pids(7, str(tmp_path)) == (100, 102)
    assert find_tgtd_pids(0, str(tmp_path)) == (105,)
    assert find_tgtd_pids(8, str(tmp_path)) == (101,)


def test_find_tgtd_pids_on_this_machine_does_not_crash():
    assert isinstance(find_tgtd_pids(31999), tuple)


def test_start_daemon_already_running_starts_nothing(tmp_path):
    fake = FakeRunner()
    fake.answer(SHOW, stdout="")
    fake_proc(tmp_path, 321, ["tgtd", "-f", "-C", str(PORT)])
    t = make(fake)
    t.proc_root = str(tmp_path)
    res = t.start_daemon()
    assert res.ok and "already running" in res.message
    assert fake.spawned == [] and t.pid == 321


def test_start_daemon_starts_and_waits_until_tgtadm_answers(tmp_path):
    fake = FakeRunner()
    down = result(SHOW, NOT_RUNNING[0], stderr=NOT_RUNNING[1])
    sequence(fake, SHOW, [down, down, down, result(SHOW)])
    fake_proc(tmp_path, 4242, ["tgtd", "-f", "-C", str(PORT)])  # FakeRunner's pid
    t = make(fake, log_file="/var/log/tgtd.log")
    t.proc_root = str(tmp_path)
    res = t.start_daemon()
    assert res.ok, res.message
    assert fake.spawned == [("tgtd", "-f", "-C", str(PORT))]
    assert t.pid == 4242 and "pid 4242" in res.message
    assert len(fake.calls) == 4


def test_start_daemon_notices_a_daemon_that_exits_at_once(tmp_path):
    fake = FakeRunner()
    answer(fake, ("--mode", "target", "--op", "show"), NOT_RUNNING)
    t = make(fake, log_file="/var/log/tgtd.log")
    t.proc_root = str(tmp_path)  # no /proc/4242: it is gone
    res = t.start_daemon()
    assert not res.ok and "exited at once" in res.message and "/var/log/tgtd.log" in res.message
    assert t.pid is None and len(fake.calls) == 2


def test_start_daemon_gives_up_after_a_bounded_wait(tmp_path, monkeypatch):
    monkeypatch.setattr(target_mod, "READY_TIMEOUT", 0.05)
    fake = FakeRunner()
    answer(fake, ("--mode", "target", "--op", "show"), NOT_RUNNING)
    fake_proc(tmp_path, 4242, ["tgtd", "-f", "-C", str(PORT)])  # alive but never answers
    t = make(fake)
    t.proc_root = str(tmp_path)
    res = t.start_daemon()
    assert not res.ok and "does not answer" in res.message


def stopping_daemon(fake: FakeRunner, proc: Path, pid: int) -> None:
    """A daemon that answers until ``--mode system --op delete``, then exits (leaves /proc)."""
    state = {"up": True}

    def show(argv):
        if state["up"]:
            return result(argv, stdout=fixture("target-1-lun.txt"))
        return result(argv, NOT_RUNNING[0], stderr=NOT_RUNNING[1])

    def system_delete(argv):
        state["up"] = False
        (proc / str(pid) / "stat").write_text(f"{pid} (tgtd) Z 1 0 0 0\n")
        return result(argv)

    fake.answer_with(SHOW, show)
    fake.answer(ADM + ("--mode", "target", "--op", "delete"))
    fake.answer_with(ADM + ("--mode", "system", "--op", "delete"), system_delete)


def test_stop_daemon_deletes_target_then_system_and_waits_for_the_pid(tmp_path):
    fake = FakeRunner()
    fake_proc(tmp_path, 555, ["tgtd", "-f", "-C", str(PORT)])
    stopping_daemon(fake, tmp_path, 555)
    t = make(fake)
    t.proc_root = str(tmp_path)
    res = t.stop_daemon()
    assert res.ok, res.message
    assert fake.calls == [
        SHOW,
        ADM + ("--mode", "target", "--op", "delete", "--force", "--tid", "1"),
        ADM + ("--mode", "system", "--op", "delete"),
    ]
    assert t.pid is None


def test_stop_daemon_kills_by_pid_when_the_daemon_stays(tmp_path, monkeypatch):
    fake = FakeRunner()
    fake_proc(tmp_path, 556, ["tgtd", "-f", "-C", str(PORT)])
    fake.answer(SHOW, stdout=fixture("two-targets.txt"))
    fake.answer(ADM + ("--mode", "target", "--op", "delete"))
    answer(fake, ("--mode", "system", "--op", "delete"), SYSTEM_BUSY)  # the other target
    killed = []

    def kill(pid, sig):  # the fake process dies on SIGKILL
        killed.append((pid, sig))
        (tmp_path / str(pid) / "stat").unlink()

    monkeypatch.setattr(target_mod.os, "kill", kill)
    t = make(fake, stop_timeout=0.05)
    t.proc_root = str(tmp_path)
    res = t.stop_daemon()
    assert res.ok, res.message
    assert killed == [(556, target_mod.signal.SIGKILL)]
    assert "killed (pid 556)" in res.message and "invalid request" in res.message


def test_stop_daemon_not_running_is_success(tmp_path):
    fake = FakeRunner()
    answer(fake, ("--mode", "target", "--op", "show"), NOT_RUNNING)
    t = make(fake)
    t.proc_root = str(tmp_path)
    res = t.stop_daemon()
    assert res.ok and "not running" in res.message
    assert fake.calls == [SHOW]


def test_stop_daemon_without_pid_waits_for_tgtadm_to_stop_answering(tmp_path):
    fake = FakeRunner()
    fake_proc(tmp_path, 557, ["tgtd", "-f", "-C", str(PORT)])
    stopping_daemon(fake, tmp_path, 557)
    (tmp_path / "557" / "cmdline").write_bytes(b"")  # pid not findable (e.g. another mount ns)
    t = make(fake)
    t.proc_root = str(tmp_path)
    res = t.stop_daemon()
    assert res.ok, res.message
    assert fake.calls[-1] == SHOW  # it asked tgtadm until the daemon stopped answering
