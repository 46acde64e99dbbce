"""``iscsi-cfg``: in-process through ``main()`` and as a real process (``--watch``, ``log -f``,
Ctrl-C), against a real control socket in front of a real Controller (see test_control.py), or
against nothing at all (the status-file fallback).
"""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import List

import pytest
import snapshots
import yaml
from iscsi_ha.controller import cli, cli_common
from iscsi_ha.controller.config import parse_config
from iscsi_ha.controller.control import describe_snapshot
from iscsi_ha.controller.model import PoolRole, VipObservation
from test_control import Host, StubDaemon, converged_master, serving
from worlds import res, world

ROOT = Path(__file__).resolve().parent.parent
LEGACY = ROOT / "examples" / "iscsi-ha.conf"
EXAMPLE_YAML = ROOT / "examples" / "iscsi-ha.yaml"
CLI = [os.path.join(os.path.dirname(sys.executable), "iscsi-cfg")]


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix=f"cli-{os.getpid()}-", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def live(tmp_path, sockdir):
    """A converged master behind a real control socket; yields (host, socket path)."""
    host = Host(str(tmp_path / "state"), converged_master())
    path = os.path.join(sockdir, "control.sock")
    with serving(StubDaemon(host.controller), path):
        yield host, path


def run(capsys, *argv: str):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_config(tmp_path: Path, *, socket_path: str, status_file: str, interval: float) -> str:
    cfg = tmp_path / "iscsi-ha.yaml"
    cfg.write_text(
        "resources: [iscsi1]\n"
        "vip: {address: 10.99.0.3/24}\n"
        f"interval: {interval}\n"
        f"paths: {{control_socket: {socket_path}, status_file: {status_file}}}\n"
    )
    return str(cfg)


# --------------------------------------------------------------------------------------------
# status against a running controller
# --------------------------------------------------------------------------------------------


def test_status_screen_from_a_live_controller(live, capsys):
    host, path = live
    host.controller.run_cycle()
    code, out, err = run(capsys, "--socket", path, "status")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("iscsi-ha ") and "on test-host - DRBD 8.4.11" in lines[0]
    assert "HOST ROLE      MASTER" in lines
    assert "STORAGE ROLE   PRIMARY  (wanted primary: host is pool master)" in lines
    assert "MANUAL MODE    off (storage follows the pool role)" in lines
    row = next(line for line in lines if " iscsi1 " in f" {line} ")
    assert row.split()[1:7] == ["Primary", "Secondary", "Connected", "UpToDate", "UpToDate", "in"]
    assert "ISCSI TARGET   serving 1 LUN, 0 sessions" in lines
    assert "VIRTUAL IP     10.99.0.3/24 on eth0: local" in lines
    assert re.search(r"^LAST CYCLE     OK, [0-2]s ago \(took \d+ ms\)$", out, re.M)
    assert "no action" in out
    assert "WARNING" not in out


def test_status_follows_the_controller_state(live, capsys):
    host, path = live
    assert run(capsys, "--socket", path, "manual-mode-enable")[0] == 0
    assert run(capsys, "--socket", path, "become-secondary")[0] == 0
    host.controller.run_cycle()  # the follow-up cycle the daemon would run (trigger)
    code, out, _ = run(capsys, "--socket", path, "status")
    assert code == 0
    assert re.search(
        r"^MANUAL MODE    ON since \d{4}-\d\d-\d\d .*\(operator asked for "
        r"secondary\)$",
        out,
        re.M,
    )
    assert "STORAGE ROLE   SECONDARY" in out
    assert "ISCSI TARGET   standby (tgtd running, no target)" in out
    assert "on eth0: not local" in out


def test_status_json_is_the_socket_answer(live, capsys):
    host, path = live
    host.controller.run_cycle()
    code, out, _ = run(capsys, "--socket", path, "status", "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["ok"] is True and doc["hostname"] == "test-host"
    assert doc["last"]["observation"]["target"]["serving"] is True
    assert doc["counters"]["cycles"] == {"ok": 1}


# --------------------------------------------------------------------------------------------
# the status screen, rendered from realistic snapshots
# --------------------------------------------------------------------------------------------


def screen(snap, now=None) -> str:
    return cli.render_status(describe_snapshot(snap, now or time.time()))


def test_screen_shows_resync_progress_and_eta():
    out = screen(snapshots.syncing(resources=2))
    rows = [line for line in out.splitlines() if "SyncSource" in line]
    assert len(rows) == 2
    assert all("Inconsistent  42.0% ETA 2m00s (6.0 GiB to go)" in r for r in rows)


def test_screen_warns_about_split_brain_lost_quorum_and_unreadable_state():
    out = screen(snapshots.split_brain())
    assert "SPLIT BRAIN" in out
    assert "WARNING: split brain on iscsi1" in out
    out = screen(snapshots.odd_resources())
    assert "WARNING: iscsi4 has lost quorum" in out
    assert "ERROR iscsi3: cannot read `drbdadm cstate iscsi3`: 'garbled'" in out
    assert re.search(r"iscsi2\s+down\s+-\s+Unconfigured", out)
    assert "STORAGE ROLE   UNKNOWN" in out


def test_screen_warns_when_the_last_cycle_is_old():
    now = time.time()
    fresh = screen(snapshots.master(now=now - 9), now)  # 9 s < interval 5 + 5
    assert "WARNING" not in fresh and "9s ago" in fresh
    old = screen(snapshots.master(now=now - 75), now)
    assert "LAST CYCLE     OK, 1m15s ago" in old
    assert "WARNING: the last cycle ended 1m15s ago" in old and "may be stuck" in old


def test_screen_shows_manual_mode_the_vip_conflict_and_the_pool_master():
    snap = snapshots.master(manual=snapshots.manual_on("secondary"))
    vip = VipObservation(address="10.10.10.3/24", interface="xenbr0", local=False, conflict=True)
    last = replace(snap.last, observation=replace(snap.last.observation, vip=vip))
    out = screen(replace(snap, last=last))
    assert "(operator asked for secondary)" in out
    assert "10.10.10.3/24 on xenbr0: not local, CONFLICT: another host answers ARP" in out
    assert "WARNING: another host answers for the VIP 10.10.10.3/24" in out
    out = screen(snapshots.slave())
    assert "HOST ROLE      SLAVE  (pool master is 192.0.2.11)" in out
    out = screen(snapshots.unknown_pool())
    assert "HOST ROLE      UNKNOWN  (pool.conf says 'broken')" in out
    assert "holding" in out


def test_screen_before_the_first_cycle_and_after_a_failed_one():
    assert "none yet" in screen(snapshots.starting())
    assert "not observed yet" in screen(snapshots.starting())
    out = screen(snapshots.failed_cycle())
    assert "LAST CYCLE     ERROR" in out and "Too many open files" in out
    assert "starting" in cli.render_status(describe_snapshot(None, time.time()))


def test_screen_marks_states_observed_before_the_cycle_acted():
    out = screen(snapshots.promoting())
    assert "observed before the last cycle's actions" in out
    assert "1 of 2 PBDs NOT attached" in out
    assert "observed before" not in screen(snapshots.master())


# --------------------------------------------------------------------------------------------
# the controller is down: the legacy status file
# --------------------------------------------------------------------------------------------


def legacy_status(path: Path, age: float) -> str:
    text = "HOST ROLE: MASTER\nDRBD ROLE: iscsi1=Primary\nVIRTUAL IP: 10.10.10.3 is local\n"
    path.write_text(text)
    t = time.time() - age
    os.utime(path, (t, t))
    return text


@pytest.mark.parametrize("interval, stale", [(2, True), (30, False)])
def test_controller_down_shows_the_status_file_and_warns_when_it_is_stale(
    tmp_path, capsys, interval, stale
):
    status = tmp_path / "status"
    text = legacy_status(status, age=10)  # stale when older than interval + 5 s
    cfg = write_config(
        tmp_path,
        socket_path=str(tmp_path / "none.sock"),
        status_file=str(status),
        interval=interval,
    )
    code, out, err = run(capsys, "--config", cfg, "status")
    assert code == 3
    assert out == text
    assert f"not reachable: {tmp_path / 'none.sock'} does not exist" in err
    assert "showing the status file it last wrote" in err and "written 10s ago" in err
    assert ("WARNING" in err) is stale
    if stale:
        assert f"older than the loop interval + 5s ({interval + 5}s)" in err


def test_connection_refused_and_no_answer_count_as_down(tmp_path, capsys, monkeypatch):
    status = tmp_path / "status"
    legacy_status(status, age=1)
    dead = str(tmp_path / "dead.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(dead)
    s.close()
    cfg = write_config(tmp_path, socket_path=dead, status_file=str(status), interval=5)
    code, out, err = run(capsys, "--config", cfg, "status")
    assert code == 3 and "connection refused" in err and "WARNING" not in err

    # A listener that never answers (a hung controller): bounded by the query timeout.
    monkeypatch.setattr(cli_common, "QUERY_TIMEOUT", 0.3)
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        hung.bind(str(tmp_path / "hung.sock"))
        hung.listen(1)
        t0 = time.monotonic()
        code, out, err = run(
            capsys, "--config", cfg, "--socket", str(tmp_path / "hung.sock"), "status"
        )
        assert time.monotonic() - t0 < 2
    finally:
        hung.close()
    assert code == 3 and "no answer to status within 0.3s" in err
    assert out.startswith("HOST ROLE: MASTER")


def test_controller_down_json_and_no_status_file(tmp_path, capsys):
    status = tmp_path / "status"
    legacy_status(status, age=100)
    cfg = write_config(
        tmp_path, socket_path=str(tmp_path / "none.sock"), status_file=str(status), interval=5
    )
    code, out, err = run(capsys, "--config", cfg, "status", "--json")
    doc = json.loads(out)
    assert code == 3 and doc["reachable"] is False and doc["status_file"]["stale"] is True
    assert doc["status_file"]["text"].startswith("HOST ROLE: MASTER")
    status.unlink()
    code, out, err = run(capsys, "--config", cfg, "status")
    assert code == 3 and out == "" and "no status file to show either" in err


def test_an_invalid_config_still_gives_the_socket_and_status_file(tmp_path, capsys):
    status = tmp_path / "status"
    legacy_status(status, age=20)
    cfg = tmp_path / "broken.yaml"
    cfg.write_text(
        f"interval: 60\npaths: {{status_file: {status}, "
        f"control_socket: {tmp_path / 'x.sock'}}}\nvip: {{adress: 1}}\n"
    )
    code, out, err = run(capsys, "--config", str(cfg), "status")
    assert code == 3 and out.startswith("HOST ROLE: MASTER")
    assert "is not a valid configuration" in err and "check-config" in err
    assert str(tmp_path / "x.sock") in err
    assert "WARNING" not in err  # 20 s < interval 60 + 5 s: interval was read too


# --------------------------------------------------------------------------------------------
# role commands, get, log
# --------------------------------------------------------------------------------------------


def test_role_commands_exit_codes_and_messages(live, capsys):
    host, path = live
    code, out, err = run(capsys, "--socket", path, "become-secondary")
    assert code == 1 and out == ""
    assert "refused: become-secondary works only in manual mode" in err
    code, out, err = run(capsys, "--socket", path, "manual-mode-enable")
    assert code == 0 and out.startswith("manual mode enabled")
    code, out, err = run(capsys, "--socket", path, "become-secondary")
    assert code == 0 and "demoted iscsi1" in out
    code, out, err = run(capsys, "--socket", path, "manual-mode-disable")
    assert code == 1 and "run `iscsi-cfg become-primary` first" in err
    assert host.roles == ["Secondary"]


def test_unreachable_controller_exits_3_for_every_socket_command(tmp_path, capsys):
    sock = str(tmp_path / "none.sock")
    for argv in (["get"], ["log"], ["become-primary"], ["manual-mode-enable"]):
        code, out, err = run(capsys, "--socket", sock, *argv)
        assert code == 3, argv
        assert "not reachable" in err


def test_get_prints_yaml_or_json(live, capsys):
    host, path = live
    code, out, _ = run(capsys, "--socket", path, "get")
    assert code == 0 and out.startswith("# Effective configuration")
    data = yaml.safe_load(out)
    assert data["vip"]["address"] == "10.99.0.3/24" and data["resources"] == ["iscsi1"]
    code, out, _ = run(capsys, "--socket", path, "get", "--json")
    assert json.loads(out)["control"]["allowed_uids"] == [0]


def test_log_prints_one_line_per_cycle(live, capsys):
    host, path = live
    host.controller.run_cycle()
    host.set_pool(PoolRole.UNKNOWN, "pool.conf is empty")
    host.controller.run_cycle()
    code, out, _ = run(capsys, "--socket", path, "log")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ok: no action", lines[0])
    assert re.match(r"^\S+ \S+ held: pool role unknown: pool.conf is empty", lines[1])


# --------------------------------------------------------------------------------------------
# as a real process: --watch, log -f, Ctrl-C
# --------------------------------------------------------------------------------------------


class Lines:
    """Reads a stream line by line in a thread, so the test can wait with a deadline."""

    def __init__(self, stream) -> None:
        self.q: "queue.Queue[str]" = queue.Queue()
        self.seen: List[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in iter(stream.readline, ""):
            self.q.put(line)

    def wait_for(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            if needle in line:
                return line
        raise AssertionError(f"{needle!r} not seen within {timeout}s; got {self.seen!r}")


def sigint_default() -> None:
    """Give the child the default SIGINT (Ctrl-C) behaviour even when the test runner was started
    in the background by a shell, which makes SIGINT ignored and the ignore inherited."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
        raise


def test_watch_redraws_until_ctrl_c(live):
    host, path = live
    proc = subprocess.Popen(
        CLI + ["--socket", path, "status", "--watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )
    try:
        out = Lines(proc.stdout)
        out.wait_for("LAST CYCLE     none yet")
        t0 = time.monotonic()
        host.controller.run_cycle()  # the next frame must show it
        out.wait_for("LAST CYCLE     OK")
        waited = time.monotonic() - t0
        out.wait_for("SINCE START    1 ok")
    finally:
        code = stop(proc)
    assert code == 0
    assert waited < 4.5  # redrawn within one 2 s period (plus slack)
    assert not any("\033[" in line for line in out.seen)  # not a terminal: no escapes


def test_watch_clears_the_screen_on_a_terminal(live):
    host, path = live
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        CLI + ["--socket", path, "status", "--watch"],
        stdout=slave,
        stderr=subprocess.DEVNULL,
        preexec_fn=sigint_default,
    )
    os.close(slave)
    data = b""
    try:
        deadline = time.monotonic() + 10
        while data.count(cli.CLEAR_SCREEN.encode()) < 2 and time.monotonic() < deadline:
            try:
                data += os.read(master, 65536)
            except OSError:
                break
    finally:
        code = stop(proc)
        os.close(master)
    assert code == 0
    assert data.count(cli.CLEAR_SCREEN.encode()) >= 2
    assert b"Ctrl-C to stop" in data


def test_log_follow_prints_new_cycles_until_ctrl_c(live):
    host, path = live
    host.controller.run_cycle()
    proc = subprocess.Popen(
        CLI + ["--socket", path, "log", "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )
    try:
        out = Lines(proc.stdout)
        out.wait_for("ok: no action")
        host.set_pool(PoolRole.UNKNOWN, "pool.conf says 'broken'")
        host.controller.run_cycle()
        out.wait_for("pool.conf says 'broken'", timeout=5)
    finally:
        code = stop(proc)
    assert code == 0
    assert sum("ok: no action" in line for line in out.seen) == 1  # old lines are not repeated


# --------------------------------------------------------------------------------------------
# import-conf, check-config
# --------------------------------------------------------------------------------------------

SMTP_PASSWORD = "example-smtp-Secret-4711"


def legacy_keys() -> List[str]:
    return re.findall(r"^(?:export\s+)?([A-Z_]+)=", LEGACY.read_text(), re.M)


def test_import_conf_converts_every_documented_key(capsys):
    code, out, err = run(capsys, "import-conf", str(LEGACY))
    assert code == 0
    cfg = parse_config(yaml.safe_load(out), "converted")
    assert cfg.resources == ("iscsi1", "iscsi2")
    assert cfg.vip.address == "10.10.10.3/24" and cfg.vip.interface == "xenbr1"
    assert cfg.interval == 10 and cfg.cycle_deadline == 35  # 10 + 5 starts x 5 s scan rate
    assert cfg.logging.level == "info"
    # Every key of the legacy file is accounted for in the notes on stderr.
    keys = legacy_keys()
    assert len(keys) >= 20
    assert [k for k in keys if k not in err] == []
    mail = next(line for line in err.splitlines() if "MAIL_ON" in line)
    assert "dropped" in mail and "Alertmanager" in mail
    assert SMTP_PASSWORD not in out + err
    assert out.startswith("# iscsi-ha configuration converted")


def test_import_conf_to_a_file_refuses_to_overwrite_without_force(tmp_path, capsys):
    target = tmp_path / "iscsi-ha.yaml"
    code, out, err = run(capsys, "import-conf", str(LEGACY), "-o", str(target))
    assert code == 0 and out == ""
    assert f"wrote {target}" in err
    first = target.read_text()
    assert parse_config(yaml.safe_load(first)).resources == ("iscsi1", "iscsi2")

    target.write_text("# edited by hand\n")
    code, out, err = run(capsys, "import-conf", str(LEGACY), "-o", str(target))
    assert code == 2 and "exists; not overwriting" in err
    assert target.read_text() == "# edited by hand\n"
    code, out, err = run(capsys, "import-conf", str(LEGACY), "-o", str(target), "--force")
    assert code == 0 and target.read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iscsi-ha.yaml"]  # no temp files


def test_import_conf_of_a_bad_file_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "iscsi-ha.conf"
    bad.write_text(
        "DRBD_RESOURCES=iscsi1\nDRBD_VIRTUAL_IP=10.10.10.300\nDRBD_VIRTUAL_MASK=255.255.255.0\n"
    )
    target = tmp_path / "out.yaml"
    code, out, err = run(capsys, "import-conf", str(bad), "-o", str(target))
    assert code == 2 and "nothing was written" in err and "10.10.10.300" in err
    assert not target.exists()
    code, out, err = run(capsys, "import-conf", str(tmp_path / "missing.conf"))
    assert code == 2 and "no such file" in err


def test_check_config_valid_and_invalid(tmp_path, capsys):
    code, out, err = run(capsys, "check-config", str(EXAMPLE_YAML))
    assert (code, out, err) == (0, f"OK: {EXAMPLE_YAML}\n", "")

    bad = tmp_path / "bad.yaml"
    bad.write_text("resources: [iscsi1]\nvip: {address: 10.10.10.300/24}\nintervall: 5\n")
    code, out, err = run(capsys, "check-config", str(bad))
    assert code == 2 and out == ""
    assert f"{bad}: vip.address: '10.10.10.300/24'" in err
    assert f"{bad}: intervall" in err and "interval" in err
    assert "2 problems" in err

    # Without FILE: the --config file.
    code, out, _ = run(capsys, "--config", str(EXAMPLE_YAML), "check-config")
    assert code == 0 and out == f"OK: {EXAMPLE_YAML}\n"
    code, _, err = run(capsys, "check-config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "no such file" in err


# --------------------------------------------------------------------------------------------
# usage
# --------------------------------------------------------------------------------------------


def test_top_level_help_shows_the_planned_switch(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    steps = [
        "on both hosts:             iscsi-cfg manual-mode-enable",
        "on the current primary:    iscsi-cfg become-secondary",
        "on the other host:         iscsi-cfg become-primary",
        "afterwards, on both hosts: iscsi-cfg manual-mode-disable",
    ]
    positions = [out.index(s) for s in steps]
    assert positions == sorted(positions)
    assert "3  the controller is unreachable" in out


@pytest.mark.parametrize("command", list(cli.HELP))
def test_every_command_help_says_what_when_and_exit_codes(capsys, command):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "exit codes:" in out and "1  refused for safety" in out
    assert cli.HELP[command][1].split("\n")[0] in out


def test_usage_errors_exit_2_and_version(capsys):
    assert cli.main([]) == 2
    for argv in (["frobnicate"], ["status", "--bogus"], ["import-conf"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"iscsi-cfg {snapshots.VERSION}"


def test_become_primary_through_the_cli_on_a_stale_slave(tmp_path, sockdir, capsys):
    """The whole path for a refusal from the cycle itself, as an operator would see it."""
    host = Host(
        str(tmp_path),
        world(
            pool=PoolRole.SLAVE,
            resources=(
                res(
                    role="Secondary",
                    peer_role="Unknown",
                    connection="StandAlone",
                    disk="Outdated",
                    peer_disk="DUnknown",
                ),
            ),
        ),
    )
    path = os.path.join(sockdir, "c.sock")
    with serving(StubDaemon(host.controller), path):
        assert run(capsys, "--socket", path, "manual-mode-enable")[0] == 0
        code, out, err = run(capsys, "--socket", path, "become-primary")
    assert code == 1 and out == ""
    assert "not promoting iscsi1: local disk is Outdated" in err
    assert host.roles == ["Secondary"]


# --------------------------------------------------------------------------------------------
# the real daemon
# --------------------------------------------------------------------------------------------


def test_the_real_daemon_serves_the_socket_and_removes_it_on_sigterm(tmp_path, sockdir, capsys):
    """`iscsi-ha run` with pool.conf 'broken' (so it holds and changes nothing): the CLI talks to
    it, a second controller refuses to start, SIGTERM removes the socket, status falls back."""
    (tmp_path / "pool.conf").write_text("broken\n")
    sock = os.path.join(sockdir, "run", "control.sock")
    cfg = tmp_path / "iscsi-ha.yaml"
    cfg.write_text(
        "resources: [iscsi1]\n"
        "vip: {address: 10.99.7.3/24, interface: nonexist0}\n"
        "interval: 1\n"
        f"pool: {{conf: {tmp_path / 'pool.conf'}}}\n"
        "xenapi: {enabled: false}\n"
        "exporter: {enabled: false}\n"
        "logging: {syslog: false}\n"
        "target: {control_port: 7913}\n"
        f"control: {{allowed_uids: [{os.geteuid()}]}}\n"  # [0] under CI; anyone in `make unit`
        f"paths: {{state_dir: {tmp_path / 'state'}, status_file: {tmp_path / 'state/status'}, "
        f"control_socket: {sock}}}\n"
    )
    daemon_cli = os.path.join(os.path.dirname(sys.executable), "iscsi-ha")
    proc = subprocess.Popen(
        [daemon_cli, "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        doc = None
        while time.monotonic() < deadline:
            code, out, _ = run(capsys, "--config", str(cfg), "status", "--json")
            if code == 0 and json.loads(out).get("last"):
                doc = json.loads(out)
                break
            time.sleep(0.2)
        assert doc is not None, "the daemon never answered with a cycle"
        assert doc["last"]["outcome"] == "held"
        assert "pool.conf says 'broken'" in doc["last"]["message"]
        code, out, _ = run(capsys, "--config", str(cfg), "get", "--json")
        assert code == 0 and json.loads(out)["paths"]["control_socket"] == sock

        second = subprocess.run(
            [daemon_cli, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=30
        )
        assert second.returncode != 0
        assert "another iscsi-ha controller is running" in second.stderr
        assert run(capsys, "--config", str(cfg), "status")[0] == 0  # the first one still serves
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0
    assert not os.path.exists(sock)
    code, out, err = run(capsys, "--config", str(cfg), "status")
    assert code == 3 and out.startswith("HOST ROLE: UNKNOWN")
