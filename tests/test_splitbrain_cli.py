"""``iscsi-cfg split-brain resolve``'s flow over a fake pair of hosts built from real captures.

The two hosts answer the control socket's ``split-brain`` requests (evidence, step, audit) the
way the controllers do, from the captured states of ``tests/fixtures/drbd84-splitbrain``: the
split brain until the steps ran, then the captured state after the recovery. What is checked is
the CLI's part: the order of DRBD's steps across the two hosts, that nothing runs when refused
or not confirmed, that it stops at the first failed step, and the audit on both hosts. The real
thing runs in ``tests/test_vm_splitbrain.py``.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any, Dict, List, Tuple

from iscsi_ha.controller import cli
from iscsi_ha.controller import splitbrain as sb
from iscsi_ha.controller.splitbrain_cli import Channel, resolve
from test_splitbrain import SB, both, side


class Pair(Channel):
    """node1 is "this host"; node2 "the peer"."""

    def __init__(self, n1: sb.Side, n2: sb.Side, fail: Any = None) -> None:
        super().__init__(lambda req: {})
        self.state = {"node1": n1, "node2": n2}
        self.after = {
            "node1": side(
                "node1", SB / "sb-both-resolved-node1.txt", SB / "sb-both-dmesg-after-node1.txt"
            ),
            "node2": side(
                "node2", SB / "sb-both-resolved-node2.txt", SB / "sb-both-dmesg-after-node2.txt"
            ),
        }
        self.steps: List[Tuple[str, str]] = []
        self.audits: List[Tuple[str, str]] = []
        self.fail = fail or {}
        self.polls = 0

    def call(self, where: str, args: Dict[str, Any]) -> Tuple[bool, Any]:
        host = "node1" if where == "local" else "node2"
        if args["action"] == "evidence":
            if self.steps:
                self.polls += 1
                if self.polls <= 2:  # the resync, as the victim shows it, then done
                    return True, sb.side_to_dict(
                        replace(
                            self.state[host],
                            connection="SyncTarget" if host == "node1" else "SyncSource",
                            split_brain=False,
                            sync_progress=0.5,
                            sync_eta_seconds=3.0,
                        )
                    )
                return True, sb.side_to_dict(self.after[host])
            return True, sb.side_to_dict(self.state[host])
        if args["action"] == "step":
            self.steps.append((host, args["step"]))
            answer = self.fail.get((host, args["step"]))
            if answer is not None:
                return True, answer
            return True, {"command": f"drbdadm {args['step']} r0", "rc": 0, "ok": True, "said": ""}
        if args["action"] == "audit":
            self.audits.append((host, args["line"]))
            return True, {"logged": True}
        raise AssertionError(args)


def run(pair: Pair, survivor: str, force: bool = False) -> Tuple[int, List[str]]:
    lines: List[str] = []
    code = resolve(
        pair,
        "r0",
        survivor,
        yes=True,
        force=force,
        follow_limit=30,
        sleep=lambda s: None,
        out=lines.append,
    )
    return code, lines


def test_resolve_runs_drbds_steps_in_order_follows_the_resync_and_audits_on_both(capsys):
    n1, n2 = both()
    pair = Pair(n1, n2)
    code, lines = run(pair, "node2")
    assert code == cli.EXIT_OK, capsys.readouterr().err
    assert pair.steps == [
        ("node1", sb.SECONDARY),
        ("node1", sb.CONNECT_DISCARD),
        ("node2", sb.CONNECT),
    ]
    text = "\n".join(lines)
    assert "node1$ drbdadm connect --discard-my-data r0" in text
    assert "resync node1 SyncTarget: 50.0%" in text and "ETA 3 s" in text
    assert "Resynced and verified in" in text and "same data generation" in text
    assert [h for h, _ in pair.audits] == ["node1", "node2"]
    assert "survivor node2, discarded node1's changes (64 KiB" in pair.audits[0][1]


def test_the_side_without_the_vms_writes_is_refused_and_nothing_runs(capsys):
    n1, n2 = both(alone_sessions=2)  # the VMs wrote to node2
    pair = Pair(n1, n2)
    code, _ = run(pair, "node1")
    assert code == cli.EXIT_REFUSED
    assert "not the side the VMs wrote to" in capsys.readouterr().err
    assert pair.steps == [] and pair.audits == []


def test_force_overrides_that_refusal_only(capsys):
    n1, n2 = both(alone_sessions=2)
    code, _ = run(Pair(n1, n2), "node1", force=True)
    assert code == cli.EXIT_OK, capsys.readouterr().err
    # A serving victim is refused even with --force.
    pair = Pair(n1, replace(n2, sessions=1))
    code, _ = run(pair, "node1", force=True)
    assert code == cli.EXIT_REFUSED and pair.steps == []
    assert "is serving" in capsys.readouterr().err


def test_a_refused_step_stops_everything_after_it(capsys):
    n1, n2 = both()
    held = {
        "command": "drbdadm secondary r0",
        "rc": 11,
        "ok": False,
        "said": "0: State change failed: (-12) Device is held open by someone",
        "refusal": "(-12) Device is held open by someone",
    }
    pair = Pair(n1, n2, fail={("node1", sb.SECONDARY): held})
    code, _ = run(pair, "node2")
    assert code == cli.EXIT_REFUSED
    assert pair.steps == [("node1", sb.SECONDARY)]
    assert "held open" in capsys.readouterr().err and pair.audits == []


def test_one_sided_waiting_victim_is_disconnected_first_and_an_already_standalone_is_fine():
    n1, n2 = both()
    n1 = replace(n1, connection="WFConnection", split_brain=False)  # node2 detected it only
    standalone = {
        "command": "drbdadm disconnect r0",
        "rc": 10,
        "ok": False,
        "said": "Failure: (162) Invalid configuration request; unknown connection",
    }
    pair = Pair(n1, n2, fail={("node1", sb.DISCONNECT): standalone})
    code, lines = run(pair, "node2")
    assert code == cli.EXIT_OK
    assert pair.steps == [
        ("node1", sb.DISCONNECT),
        ("node1", sb.SECONDARY),
        ("node1", sb.CONNECT_DISCARD),
        ("node2", sb.CONNECT),
    ]
    assert "node1$ drbdadm disconnect r0: ok (already StandAlone)" in "\n".join(lines)


def test_not_confirmed_on_a_terminal_runs_nothing(monkeypatch, capsys):
    n1, n2 = both()
    pair = Pair(n1, n2)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "r1")
    code = resolve(
        pair,
        "r0",
        "node2",
        yes=False,
        force=False,
        follow_limit=1,
        sleep=lambda s: None,
        out=lambda s: None,
    )
    assert code == cli.EXIT_REFUSED and pair.steps == []
    assert "not confirmed" in capsys.readouterr().err


# --------------------------------------------------------------------------- one host's part


def test_a_step_runs_exactly_drbds_command_and_reports_drbds_words(tmp_path):
    from fakes import FakeRunner
    from iscsi_ha.controller.splitbrain_ops import SplitBrainRefused, audit, run_step
    from iscsi_ha.controller.systems.drbd import Drbd

    fake = FakeRunner()
    # Real DRBD 8.4's answer (tests/fixtures/drbd84-splitbrain, the one-sided run).
    fake.answer(
        ("drbdadm", "connect", "--discard-my-data", "r0"),
        rc=10,
        stderr="r0: Failure: (102) Local address(port) already in use.\n",
    )
    drbd = Drbd(fake, version="8.4")
    out = run_step(drbd, "r0", sb.CONNECT_DISCARD, "uid 0")
    assert fake.calls == [("drbdadm", "connect", "--discard-my-data", "r0")]
    assert out["rc"] == 10 and not out["ok"] and "(102)" in out["said"]
    try:
        run_step(drbd, "r0", "primary --force", "uid 0")
    except SplitBrainRefused as exc:
        assert "unknown step" in str(exc)
    else:
        raise AssertionError("a step outside DRBD's resolve steps ran")
    assert len(fake.calls) == 1
    rec = audit(str(tmp_path), "split-brain resolve r0: survivor node2", "uid 0")
    assert rec["file"] and "survivor node2" in (tmp_path / "split-brain.log").read_text()
    assert oct((tmp_path / "split-brain.log").stat().st_mode & 0o777) == "0o600"


def test_runbook_uses_the_commands_and_keeps_the_manual_steps_as_fallback():
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "runbook.md").read_text()
    section = text[text.index("## IscsiHaSplitBrain") : text.index("## IscsiHaPromotionBlocked")]
    for needle in (
        "iscsi-cfg split-brain iscsi1",
        "iscsi-cfg split-brain resolve --survivor",
        "Fallback: resolve by hand",
        "drbdadm connect --discard-my-data",
        "one side only",
        "split-brain.log",
    ):
        assert needle in section, needle
    assert section.index("split-brain resolve") < section.index("Fallback")


def test_help_and_usage_errors():
    parser = cli.parser()
    args = parser.parse_args(["split-brain", "resolve", "r0", "--survivor", "node2", "--yes"])
    assert args.command == "split-brain" and args.words == ["resolve", "r0"]
    assert (
        cli.main(["--socket", "/nonexistent", "split-brain", "resolve", "r0"]) == cli.EXIT_USAGE
    )  # no --survivor
    assert cli.main(["--socket", "/nonexistent", "split-brain", "r0", "--force"]) == cli.EXIT_USAGE


def test_options_may_come_before_the_resource():
    args = cli.parser().parse_args(["split-brain", "resolve", "--survivor", "node2", "r0"])
    assert args.words == ["resolve", "r0"] and args.survivor == "node2"
    args = cli.parser().parse_args(["split-brain", "--json", "r0"])
    assert args.words == ["r0"] and args.json


# --------------------------------------------------------------------------- the control socket


def test_split_brain_over_the_real_control_socket(tmp_path):
    """The control command end to end: a controller over a fake world answers `evidence` with
    this host's side; a relay to the peer without a peer channel and a step that is not one of
    DRBD's resolve steps are refused with a sentence; the audit line lands in the state dir."""
    import tempfile

    from fakes import FakeRunner
    from iscsi_ha.controller.config import Config, PathsConfig, VipConfig
    from iscsi_ha.controller.model import PoolRole
    from test_control import Host, StubDaemon, serving
    from worlds import res, world

    state = tmp_path / "state"
    state.mkdir()
    split = world(
        pool=PoolRole.MASTER,
        resources=(
            res(
                name="iscsi1",
                role="Primary",
                peer_role="Unknown",
                connection="StandAlone",
                peer_disk="DUnknown",
                split_brain=True,
                out_of_sync_bytes=65536,
            ),
        ),
        serving=True,
        vip_local=True,
    )
    host = Host(str(state), split)
    # The world's DRBD runs nothing; `drbdadm sh-ll-dev` (the backing device) gets no answer.
    drbd = host.controller.systems.drbd
    drbd.runner, drbd.drbdadm, drbd.timeout = FakeRunner(), "drbdadm", None
    cfg = Config(
        resources=("iscsi1",),
        vip=VipConfig(address="10.99.0.3/24"),
        paths=PathsConfig(state_dir=str(state)),
    )
    sockdir = tempfile.mkdtemp(prefix="sb-", dir="/tmp")
    path = os.path.join(sockdir, "control.sock")
    with serving(StubDaemon(host.controller, cfg), path):
        answer = cli.ask(path, {"cmd": "split-brain", "action": "evidence", "resource": "iscsi1"})
        assert answer["ok"], answer
        side = sb.side_from_dict(answer["result"])
        assert (side.host, side.connection, side.split_brain) == ("test-host", "StandAlone", True)
        assert side.out_of_sync_bytes == 65536 and side.vip_local is True
        assert side.lvm_volume is None and "sh-ll-dev" in side.lvm_error
        answer = cli.ask(
            path, {"cmd": "split-brain", "host": "peer", "action": "evidence", "resource": "iscsi1"}
        )
        assert not answer["ok"] and "no peer channel" in answer["error"]
        answer = cli.ask(
            path,
            {
                "cmd": "split-brain",
                "action": "step",
                "resource": "iscsi1",
                "step": "primary --force",
            },
        )
        assert not answer["ok"] and "unknown step" in answer["error"] and answer["code"] == 2
        answer = cli.ask(path, {"cmd": "split-brain", "action": "evidence", "resource": "other"})
        assert not answer["ok"] and "not a resource" in answer["error"]
        answer = cli.ask(
            path,
            {"cmd": "split-brain", "action": "audit", "line": "x resolved", "who": "user alice"},
        )
        assert answer["ok"], answer
    record = json.loads((state / "split-brain.log").read_text())
    assert record["line"] == "x resolved" and "user alice" in record["who"]
    assert "uid" in record["who"]


def test_view_without_a_controller_says_so_and_exits_3(capsys):
    code = cli.main(["--socket", "/nonexistent/control.sock", "split-brain", "r0"])
    assert code == cli.EXIT_UNREACHABLE
    out = capsys.readouterr().out
    assert "unknown: one side could not be read" in out and "the local iscsi-ha controller" in out


def test_evidence_lost_by_the_peer_channel_is_asked_again_but_a_refusal_is_not():
    n1, n2 = both()
    answers = {
        "peer": [
            {"ok": False, "kind": "bad_answer", "error": "the peer: answered b''"},
            {"ok": False, "kind": "timeout", "error": "the peer: timed out"},
            {"ok": True, "result": sb.side_to_dict(n2)},
        ]
    }
    asked = []

    def ask(req):
        asked.append(req.get("host", "local"))
        if req.get("host") == "peer":
            return answers["peer"].pop(0)
        return {"ok": True, "result": sb.side_to_dict(n1)}

    local, peer = Channel(ask, sleep=lambda s: None).sides("r0")
    assert peer == n2 and asked.count("peer") == 3
    refused = Channel(
        lambda req: {"ok": False, "kind": "unknown_resource", "error": "no r0"},
        sleep=lambda s: None,
    )
    calls = []
    refused._ask = lambda req: (
        calls.append(req) or {"ok": False, "kind": "unknown_resource", "error": "no r0"}
    )
    local, peer = refused.sides("r0")
    assert len(calls) == 2 and peer.error == "no r0"
