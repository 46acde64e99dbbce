"""Hostile configuration files (#16): every one is a ConfigError naming file, key/line and fix.

Before: a control character anywhere (a pasted colour code in a comment), a NUL, YAML nested
~450 levels or a 4,300-digit integer escaped as a traceback; ``interval: 1.0e+308``,
``probe_interval: 1e308`` and ``command_timeout: 1e10`` passed ``check-config`` and then killed
the daemon; a FIFO as the config hung, ``/dev/zero`` ate memory. SIGHUP with any of them ended
``iscsi-ha run``; every ``iscsi-cfg`` command crashed on them.
"""

import os
import signal
import subprocess
import sys
import threading

import pytest
from iscsi_ha.controller import cli
from iscsi_ha.controller import daemon as daemon_mod
from iscsi_ha.controller.config import ConfigError, load_config
from test_daemon import config_text, wait_for

MINIMAL = "resources: [iscsi1]\nvip:\n  address: 10.10.10.3/24\n"
DEEP = 450

# name -> (file content, what the one problem must say)
HOSTILE = {
    "colour-code-in-comment": (
        MINIMAL + "# \x1b[31mred\x1b[0m note\n",
        ["line 4, column 3", "escape character", "U+001B"],
    ),
    "nul": (MINIMAL.replace("iscsi1", "iscsi\x001"), ["line 1", "NUL", "U+0000"]),
    "bell-in-value": ("node_name: a\x07b\n" + MINIMAL, ["line 1, column 13", "U+0007"]),
    "deep-flow": (
        MINIMAL + "drbd: " + "[" * DEEP + "]" * DEEP + "\n",
        ["line 4", "more than 32 levels"],
    ),
    "deep-block": (
        MINIMAL + "".join(" " * i + f"k{i}:\n" for i in range(DEEP)),
        ["nested more than 32 levels"],
    ),
    "4300-digit-int": (
        MINIMAL + "interval: 1" + "0" * 4300 + "\n",
        ["line 4", "4301 digits", "at most 30 digits"],
    ),
    "400-digit-tid": (MINIMAL + "target: {tid: " + "9" * 400 + "}\n", ["400 digits"]),
    "interval-1e308": (MINIMAL + "interval: 1.0e+308\n", ["interval:", "at most 3600"]),
    "probe-interval-1e308": (
        MINIMAL.replace(
            "address: 10.10.10.3/24", "address: 10.10.10.3/24\n  probe_interval: 1.0e+308"
        ),
        ["vip.probe_interval:", "at most 86400"],
    ),
    "command-timeout-1e10": (
        MINIMAL + "command_timeout: 1.0e+10\n",
        ["command_timeout:", "at most 3600"],
    ),
    "cycle-deadline-1e300": (
        MINIMAL + "cycle_deadline: 1.0e+300\n",
        ["cycle_deadline:", "at most"],
    ),
    "xenapi-timeout": (MINIMAL + "xenapi: {timeout: 1.0e+9}\n", ["xenapi.timeout:", "at most"]),
    "stop-timeout": (MINIMAL + "target: {stop_timeout: 1.0e+9}\n", ["target.stop_timeout:"]),
    "announce-interval": (
        MINIMAL.replace(
            "address: 10.10.10.3/24", "address: 10.10.10.3/24\n  announce_interval: 1.0e+12"
        ),
        ["vip.announce_interval:", "at most 86400"],
    ),
    "announce-count": (
        MINIMAL.replace(
            "address: 10.10.10.3/24", "address: 10.10.10.3/24\n  announce_count: 99999999"
        ),
        ["vip.announce_count:", "100 or less"],
    ),
    "tid": (MINIMAL + "target: {tid: 99999999999}\n", ["target.tid:", "65535 or less"]),
    "lun": (
        MINIMAL + "target: {luns: [{lun: 99999999, path: /dev/x}]}\n",
        ["target.luns[0].lun:", "16383 or less"],
    ),
    "uid": (
        MINIMAL + "control: {allowed_uids: [0, 99999999999999]}\n",
        ["control.allowed_uids[1]:", "4294967294 or less"],
    ),
    "tiny-interval": (MINIMAL + "interval: 1.0e-300\n", ["interval:", "at least 0.05"]),
}


def _problems(path):
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert lines and all(line.startswith(f"{path}: ") for line in lines), lines
    return info.value.problems


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_is_one_clear_problem(tmp_path, name):
    text, fragments = HOSTILE[name]
    path = tmp_path / "iscsi-ha.yaml"
    path.write_text(text)
    problems = _problems(path)
    assert len(problems) == 1, problems
    for fragment in fragments:
        assert fragment in problems[0], (fragment, problems[0])
    assert "Traceback" not in problems[0]


def test_a_fifo_as_the_config_is_refused_at_once(tmp_path):
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    outcome = []
    t = threading.Thread(target=lambda: outcome.append(_problems_or_none(fifo)), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "load_config blocked on a FIFO"
    assert outcome and "FIFO" in outcome[0][0] and "not a regular file" in outcome[0][0]


def _problems_or_none(path):
    try:
        load_config(path)
    except ConfigError as exc:
        return exc.problems
    return None


def test_a_device_or_a_huge_file_is_refused_without_reading_it(tmp_path):
    assert "character device" in _problems(os.devnull.replace("null", "zero"))[0]
    big = tmp_path / "big.yaml"
    big.write_text(MINIMAL + "#" * (2 * 1024 * 1024) + "\n")
    assert "more than the 1048576 bytes" in _problems(big)[0]


def test_secret_in_the_wrong_key_is_never_echoed(tmp_path):
    secret = "Hunter2-pw-x81"
    for snippet in (
        f"xenapi: {{password_file: {secret}}}",
        f"xenapi: {{password_env: '{secret}!'}}",
        "xenapi: {password_file: 8675309123}",
        "xenapi: {password_env: 8675309123}",
        f"xenapi: {{password_file: [{secret}]}}",
    ):
        path = tmp_path / "c.yaml"
        path.write_text(MINIMAL + snippet + "\n")
        problems = _problems(path)
        text = "\n".join(problems)
        assert secret not in text and "8675309123" not in text, text
        assert "xenapi.password_" in text and "not shown" in text


# ------------------------------------------------------------------ the commands that read it


@pytest.mark.parametrize(
    "name", ["colour-code-in-comment", "nul", "deep-flow", "4300-digit-int", "interval-1e308"]
)
def test_every_iscsi_cfg_command_survives_a_hostile_config(tmp_path, name, capsys):
    path = tmp_path / "iscsi-ha.yaml"
    path.write_text(HOSTILE[name][0])
    sock = str(tmp_path / "nothing.sock")
    for argv in (
        ["status"],
        ["status", "--json"],
        ["get"],
        ["log"],
        ["manual-mode-enable"],
        ["manual-mode-disable"],
        ["become-primary"],
        ["become-secondary"],
        ["check-config"],
    ):
        code = cli.main(["--config", str(path), "--socket", sock, *argv])
        assert isinstance(code, int) and code != 0, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{path}: " in err  # check-config named the file


def test_iscsi_cfg_status_with_a_fifo_config_and_a_fifo_status_file(tmp_path, capsys):
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    status = tmp_path / "status.fifo"
    os.mkfifo(status)
    (tmp_path / "c.yaml").write_text(MINIMAL + f"paths: {{status_file: {status}}}\n")
    codes = []
    for config in (fifo, tmp_path / "c.yaml"):
        t = threading.Thread(
            target=lambda c=config: codes.append(
                cli.main(["--config", str(c), "--socket", str(tmp_path / "no.sock"), "status"])
            ),
            daemon=True,
        )
        t.start()
        # A blocked open of a FIFO never returns, so any bound catches it; 5 s failed once when
        # the test got 8 % of a CPU (load 25).
        t.join(60)
        assert not t.is_alive(), f"iscsi-cfg status blocked on {config}"
    assert codes == [3, 3]  # unreachable, said so
    err = capsys.readouterr().err
    assert "FIFO" in err


def test_iscsi_ha_run_refuses_to_start_with_a_clear_message(tmp_path, capsys):
    for name in ("nul", "deep-block", "4300-digit-int", "command-timeout-1e10"):
        path = tmp_path / "iscsi-ha.yaml"
        path.write_text(HOSTILE[name][0])
        assert daemon_mod.main(["run", "--config", str(path)]) == daemon_mod.EXIT_CONFIG
        err = capsys.readouterr().err
        assert "invalid configuration" in err and "Traceback" not in err


def test_sighup_with_hostile_files_keeps_the_daemon_running(tmp_path):
    """The real `iscsi-ha run`: each hostile file is refused on SIGHUP; a good one then loads."""
    from test_daemon import RECORDING

    (tmp_path / "proc_drbd").write_text("version: 8.4.11 (api:1/proto:86-101)\n")
    (tmp_path / "pool.conf").write_text("slave: 10.0.0.1")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "drbdadm").write_text(RECORDING.format(python=sys.executable))
    (bindir / "drbdadm").chmod(0o755)
    (tmp_path / "table.json").write_text('{"drbdadm sh-minor r0": [0, "0\\n", ""]}')
    config = tmp_path / "iscsi-ha.yaml"
    config.write_text(config_text(tmp_path, 0.5))
    env = dict(
        os.environ,
        PATH=f"{bindir}:{os.environ['PATH']}",
        FAKE_DRBDADM_TABLE=str(tmp_path / "table.json"),
        FAKE_DRBDADM_LOG=str(tmp_path / "calls"),
    )
    exe = os.path.join(os.path.dirname(sys.executable), "iscsi-ha")
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [exe, "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    text = log_path.read_text
    try:
        wait_for(lambda: "started" in text(), 20, "the start")
        names = [
            "colour-code-in-comment",
            "nul",
            "deep-block",
            "4300-digit-int",
            "interval-1e308",
            "probe-interval-1e308",
            "command-timeout-1e10",
        ]
        for n, name in enumerate(names, 1):
            config.write_text(HOSTILE[name][0])
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda n=n: text().count("reload refused") >= n, 10, f"refusal of {name}")
            assert proc.poll() is None, name
        assert "Traceback" not in text()
        config.write_text(config_text(tmp_path, 0.7))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in text(), 10, "the good reload")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_strange_key_is_quoted_on_one_line(tmp_path):
    """Found by the fuzzer: a key holding a newline or a pasted paragraph."""
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL + '"bad\\nkey: x": 1\n? |\n  two\n  lines\n: 2\n')
    problems = _problems(path)
    assert len(str(ConfigError(str(path), problems)).splitlines()) == len(problems) == 2
    assert all(p.endswith("unknown key") and p.startswith("'") for p in problems), problems


def test_import_conf_refuses_a_fifo_at_once(tmp_path, capsys):
    fifo = tmp_path / "iscsi-ha.conf"
    os.mkfifo(fifo)
    codes = []
    t = threading.Thread(
        target=lambda: codes.append(cli.main(["import-conf", str(fifo)])), daemon=True
    )
    t.start()
    t.join(5)
    assert not t.is_alive(), "import-conf blocked on a FIFO"
    assert codes == [2] and "FIFO" in capsys.readouterr().err
