"""`iscsi-ha run` as a process: SIGHUP reloads (or refuses a bad file); SIGTERM never demotes.

The controller runs against replayed real DRBD 8.4 outputs (a stand-in `drbdadm` on PATH that also
records every call), on a host that is pool master and DRBD Primary. tgtd is replaced by `false`, so
the target step fails and nothing else on this machine is touched.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from drbd_captures import DRBD84, PROC_DRBD, load_capture
from test_once import FAKE_DRBDADM

RECORDING = FAKE_DRBDADM.replace(
    'key = " ".join(["drbdadm"] + sys.argv[1:])',
    'key = " ".join(["drbdadm"] + sys.argv[1:])\n'
    'open(os.environ["FAKE_DRBDADM_LOG"], "a").write(key + "\\n")',
)


def config_text(tmp_path, interval):
    return f"""\
resources: [r0]
interval: {interval}
command_timeout: 5
drbd: {{version: "8.4", proc_drbd: {tmp_path / "proc_drbd"}, kernel_log: [cat, /dev/null]}}
pool: {{conf: {tmp_path / "pool.conf"}}}
xenapi: {{enabled: false}}
target: {{control_port: 4712, tgtd: "false"}}
vip: {{address: 10.99.78.3/24, interface: lo}}
exporter: {{enabled: false}}
logging: {{syslog: false}}
paths:
  state_dir: {tmp_path / "state"}
  status_file: {tmp_path / "state" / "status"}
  control_socket: {tmp_path / "control.sock"}
"""


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.tools
def test_sighup_reloads_and_sigterm_stops_without_demoting(tmp_path):
    import json

    capture = load_capture(DRBD84 / "state-02-synced-n1primary-node1.txt")
    table = {cmd: list(ans) for cmd, ans in capture.items() if cmd.startswith("drbdadm")}
    table["drbdadm sh-minor r0"] = [0, "0\n", ""]
    (tmp_path / "table.json").write_text(json.dumps(table))
    (tmp_path / "proc_drbd").write_text(capture[PROC_DRBD][1])
    (tmp_path / "pool.conf").write_text("master")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "drbdadm").write_text(RECORDING.format(python=sys.executable))
    (bindir / "drbdadm").chmod(0o755)
    calls = tmp_path / "drbdadm.calls"
    config = tmp_path / "iscsi-ha.yaml"
    config.write_text(config_text(tmp_path, 0.5))
    env = dict(
        os.environ,
        PATH=f"{bindir}:{os.environ['PATH']}",
        FAKE_DRBDADM_TABLE=str(tmp_path / "table.json"),
        FAKE_DRBDADM_LOG=str(calls),
    )
    log = open(tmp_path / "daemon.log", "w")
    exe = os.path.join(os.path.dirname(sys.executable), "iscsi-ha")
    proc = subprocess.Popen(
        [exe, "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    text = lambda: (tmp_path / "daemon.log").read_text()  # noqa: E731
    try:
        wait_for(lambda: text().count("target_start failed") >= 2, 20, "two cycles")
        assert "host is pool master" in text()

        config.write_text("resources: [r0]\nvip: {address: 10.10.10.300/24}\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in text(), 10, "the refused reload")
        assert "vip.address" in text() and proc.poll() is None

        config.write_text(config_text(tmp_path, 0.7))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in text(), 10, "the reload")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert "stopped; storage roles left as they are" in text()
    recorded = calls.read_text().splitlines()
    assert recorded, "the fake drbdadm was never called"
    assert not [c for c in recorded if c.startswith(("drbdadm secondary", "drbdadm down"))]
    assert not (tmp_path / "control.sock").exists()  # the control socket is cleaned up
