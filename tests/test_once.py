"""`iscsi-ha once --dry-run --json` end to end, as a process, against replayed real DRBD outputs.

A stand-in `drbdadm` on PATH answers with what real DRBD 8.4 printed in each scenario (the captures
in tests/fixtures/drbd84); `cat` reads the captured /proc/drbd and kernel log from files; tgtadm and
`ip` are the real tools (no tgtd on the chosen control port, so the target reads "not running"; the
VIP is checked on the loopback interface, where it is not bound). Nothing is changed (--dry-run).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from drbd_captures import DRBD84, PROC_DRBD, load_capture, read_frames

SCENARIOS = {
    # name: (capture, pool.conf, kernel log capture or None)
    "master": ("state-02-synced-n1primary-node1.txt", "master", None),
    "master-failover": ("state-04-disconnected-node1.txt", "master", None),
    "slave": ("state-02-synced-n1primary-node1.txt", "slave:10.99.0.2", None),
    "unknown": ("state-02-synced-n1primary-node1.txt", "broken", None),
    "split-brain": (
        "state-06-after-reconnect-splitbrain-node2.txt",
        "master",
        "dmesg-splitbrain-node2.txt",
    ),
    # Issue #13's moment: the crashed ex-Primary after `drbdadm up`, before it reaches its peer
    # (the first /proc/drbd sample of the real split-brain recovery run: cs:WFConnection
    # ro:Secondary/Unknown ds:UpToDate/DUnknown).
    "crashed-primary-boot": ("proc-drbd-sb-recovery-samples.txt#0", "master", None),
    # The same moment captured for this rule in the VM lab (lab/vm/capture_gi.py): node1 was
    # Primary, the link cut, node1 power-cut, booted and brought up alone. With its get-gi.
    "crashed-primary-gi": ("../drbd84-gi/gi-03-crashed-primary-up-alone-node1.txt", "master", None),
    # Its peer, node2, outdated by `drbdadm outdate` (what the fence-peer handler asks for).
    "outdated-secondary": ("../drbd84-gi/gi-02-link-cut-node2.txt", "master", None),
}

FAKE_DRBDADM = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys
    table = json.load(open(os.environ["FAKE_DRBDADM_TABLE"]))
    key = " ".join(["drbdadm"] + sys.argv[1:])
    if key not in table:
        sys.stderr.write("fake drbdadm: no capture for %s\\n" % key)
        sys.exit(127)
    rc, out, err = table[key]
    sys.stdout.write(out)
    sys.stderr.write(err)
    sys.exit(rc)
    """
)


def run_once(tmp_path, scenario, as_json=True, command=None):
    """``command``: how to start iscsi-ha (default: this virtualenv's; test_packaging passes
    the RPM payload's)."""
    capture_name, pool_conf, dmesg = SCENARIOS[scenario]
    if "#" in capture_name:  # one sample of a /proc/drbd series
        name, index = capture_name.split("#")
        capture = {PROC_DRBD: (0, read_frames(DRBD84 / name)[int(index)].stdout, "")}
    else:
        capture = load_capture(DRBD84 / capture_name)
    table = {cmd: list(ans) for cmd, ans in capture.items() if cmd.startswith("drbdadm")}
    table["drbdadm sh-minor r0"] = [0, "0\n", ""]
    (tmp_path / "table.json").write_text(json.dumps(table))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "drbdadm"
    fake.write_text(FAKE_DRBDADM.format(python=sys.executable))
    fake.chmod(0o755)
    (tmp_path / "proc_drbd").write_text(capture[PROC_DRBD][1])
    (tmp_path / "pool.conf").write_text(pool_conf)
    kernel_log = tmp_path / "dmesg"
    kernel_log.write_text((DRBD84 / dmesg).read_text() if dmesg else "")
    config = tmp_path / "iscsi-ha.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        resources: [r0]
        command_timeout: 5
        drbd:
          version: "8.4"
          proc_drbd: {tmp_path / "proc_drbd"}
          kernel_log: [cat, {kernel_log}]
        pool: {{conf: {tmp_path / "pool.conf"}}}
        xenapi: {{enabled: false}}
        target: {{control_port: 4711}}
        vip: {{address: 10.99.77.3/24, interface: lo}}
        paths:
          state_dir: {tmp_path / "state"}
          status_file: {tmp_path / "state" / "status"}
          control_socket: {tmp_path / "control.sock"}
        """)
    )
    env = dict(
        os.environ,
        PATH=f"{bindir}:{os.environ['PATH']}",
        FAKE_DRBDADM_TABLE=str(tmp_path / "table.json"),
    )
    command = command or [os.path.join(os.path.dirname(sys.executable), "iscsi-ha")]
    proc = subprocess.run(
        [*command, "once", "--config", str(config), "--dry-run", *(["--json"] if as_json else [])],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return proc


def plan_of(out):
    return [step["action"] for step in out["plan"]]


@pytest.mark.parametrize(
    "scenario, plan, words",
    [
        # Primary/Secondary, connected: only the target and the VIP are missing. The peer is
        # connected and Secondary, so no ARP probe is needed before binding.
        (
            "master",
            ["target_start", "target_serve", "vip_add", "vip_announce"],
            "host is pool master",
        ),
        # Peer gone, local disk UpToDate, Secondary, and a fresh state directory: nothing proves
        # this host has the newest data (it did not watch the peer vanish), so no promotion.
        ("master-failover", ["target_start"], "cannot prove this host has the newest data"),
        ("slave", ["demote", "target_start"], "host is pool slave (master is 10.99.0.2)"),
        ("unknown", [], "pool role unknown: pool.conf says 'broken'"),
    ],
)
@pytest.mark.tools
def test_once_dry_run_prints_the_plan(tmp_path, scenario, plan, words):
    proc = run_once(tmp_path, scenario)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert plan_of(out) == plan
    assert words in out["message"] or words in out["reason"] or words in json.dumps(out)
    assert out["dry_run"] is True
    assert set(out) >= {"observation", "plan", "outcome"}
    # --dry-run changes nothing: no state written, no status file.
    assert not (tmp_path / "state" / "status").exists()


@pytest.mark.tools
def test_once_holds_on_the_crashed_primary_at_boot(tmp_path):
    """The sequential failure's last step: A, the crashed ex-Primary, comes up alone as pool
    master. DRBD says UpToDate; a fresh state directory proves nothing: hold, and say why."""
    proc = run_once(tmp_path, "crashed-primary-boot")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    (res,) = out["observation"]["resources"]
    assert (res["connection"], res["role"], res["disk"], res["peer_disk"]) == (
        "WFConnection",
        "Secondary",
        "UpToDate",
        "DUnknown",
    )
    assert "promote" not in plan_of(out)
    assert out["refusals"] == [
        "not promoting r0: cannot prove this host has the newest data: no record of this "
        "resource in the ledger (fresh state directory) (see `iscsi-cfg become-primary "
        "--accept-stale` in the runbook)"
    ]
    assert out["blocked"] == [["r0", "no_record"]]
    # A dry run writes nothing, not even the ledger.
    assert not (tmp_path / "state" / "ledger.json").exists()


@pytest.mark.tools
def test_once_holds_on_the_captured_crashed_primary_and_says_what_drbd_recorded(tmp_path):
    proc = run_once(tmp_path, "crashed-primary-gi")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    (res,) = out["observation"]["resources"]
    assert (res["connection"], res["role"], res["disk"]) == (
        "WFConnection",
        "Secondary",
        "UpToDate",
    )
    assert "promote" not in plan_of(out)
    (refusal,) = out["refusals"]
    assert refusal.startswith(
        "not promoting r0: cannot prove this host has the newest data: "
        "no record of this resource in the ledger"
    )
    assert "DRBD's meta data says this host crashed as Primary" in refusal
    (ev,) = out["observation"]["evidence"]
    assert ev["drbd_crashed_primary"] is True and ev["drbd_peer_outdated"] is False


@pytest.mark.tools
def test_once_an_outdated_secondary_is_refused_with_our_words(tmp_path):
    proc = run_once(tmp_path, "outdated-secondary")
    out = json.loads(proc.stdout)
    assert "promote" not in plan_of(out)
    assert any(
        "local disk is Outdated and the peer is unreachable" in r for r in out["refusals"]
    ), out["refusals"]
    assert out["blocked"] == [["r0", "local_disk_outdated"]]  # DRBD's refusal pages too


def test_once_reports_split_brain_and_does_not_resolve_it(tmp_path):
    proc = run_once(tmp_path, "split-brain")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    (res,) = out["observation"]["resources"]
    assert res["split_brain"] is True and res["connection"] == "StandAlone"
    # It is Primary already and this host is the master: it keeps serving; nothing touches DRBD.
    assert not {"promote", "demote", "drbd_up"} & set(plan_of(out))


def test_once_text_output_is_one_sentence(tmp_path):
    proc = run_once(tmp_path, "unknown", as_json=False)
    assert proc.returncode == 0
    assert proc.stdout.strip().splitlines() == [
        "held: pool role unknown: pool.conf says 'broken'; holding, nothing changed"
    ]


def test_invalid_config_exits_2_and_touches_nothing(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("resources: [r0]\nvip: {address: 10.10.10.300/24}\n")
    exe = os.path.join(os.path.dirname(sys.executable), "iscsi-ha")
    proc = subprocess.run(
        [exe, "once", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert str(config) in proc.stderr and "vip.address" in proc.stderr
    assert "10.10.10.300/24" in proc.stderr


def test_version():
    exe = os.path.join(os.path.dirname(sys.executable), "iscsi-ha")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("iscsi-ha ")
