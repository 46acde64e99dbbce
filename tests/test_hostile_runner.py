"""Hostile bytes through the runner: nothing a command prints may make an adapter raise (#16).

An initiator names itself at login and tgt prints that name; a USB stick names itself in the
kernel log. Those bytes are not ours, and one that is not UTF-8 used to raise UnicodeDecodeError
inside ``ProcessRunner.run`` -- in ``observe()``, so every cycle failed while it was there.
"""

import stat
import sys
import time
from pathlib import Path

from drbd_captures import DRBD84
from iscsi_ha.controller.systems.drbd import Drbd
from iscsi_ha.controller.systems.runner import ProcessRunner
from test_drbd import answer_84, fake_from, text


def _script(tmp_path: Path, name: str, body: bytes) -> str:
    """A command that prints ``body`` (raw bytes) and exits 0."""
    data = tmp_path / f"{name}.out"
    data.write_bytes(body)
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\nexec cat {data}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_runner_never_raises_on_non_utf8_output(tmp_path):
    cmd = _script(tmp_path, "noise", b"before \xff\xfe\xc3( after\n")
    res = ProcessRunner().run([cmd])
    assert res.ok
    assert res.stdout == "before \ufffd\ufffd\ufffd( after\n"


def test_runner_never_raises_on_non_utf8_stderr_or_on_timeout(tmp_path):
    path = tmp_path / "slow"
    path.write_bytes(b"#!/bin/sh\nprintf 'x\\377' >&2\nprintf '\\377\\n'\nsleep 5\n")
    path.chmod(0o755)
    res = ProcessRunner().run([str(path)], timeout=0.5)
    assert res.timed_out and "\ufffd" in res.stderr


def test_non_utf8_kernel_log_leaves_every_resource_readable(tmp_path):
    """The kernel log (a USB product string with a 0xff byte) next to a real split brain."""
    dmesg = text(DRBD84 / "dmesg-splitbrain-node1.txt").encode()
    usb = b"[ 9.1] usb 1-1: Product: Stick\xff\xfe Pro\n"
    kernel = _script(tmp_path, "dmesg", usb + dmesg + usb)
    fake = fake_from(DRBD84 / "state-06-after-reconnect-splitbrain-node1.txt")
    answer_84(fake, {"r0": 0})
    real = ProcessRunner()
    fake.answer_with((kernel,), lambda argv: real.run(argv))
    (r0,) = Drbd(fake, kernel_log=(kernel,)).observe(["r0"])
    assert r0.error is None, r0.error
    assert r0.connection == "StandAlone" and r0.split_brain is True


def test_children_do_not_inherit_the_xenapi_password(monkeypatch, tmp_path):
    monkeypatch.setenv("ISCSI_HA_XAPI_PASSWORD", "pw-never-in-a-child")
    monkeypatch.setenv("ISCSI_HA_KEEP_ME", "kept")
    runner = ProcessRunner(hide_env=("ISCSI_HA_XAPI_PASSWORD",))
    res = runner.run(["env"])
    assert "pw-never-in-a-child" not in res.stdout
    assert "ISCSI_HA_KEEP_ME=kept" in res.stdout
    # tgtd (start_daemon) and background commands (spawn) get the same environment.
    log = tmp_path / "daemon.log"
    pid = runner.start_daemon(["env"], str(log))
    assert pid
    for _ in range(200):
        if "ISCSI_HA_KEEP_ME" in log.read_text():
            break
        time.sleep(0.01)
    assert "ISCSI_HA_KEEP_ME=kept" in log.read_text()
    assert "pw-never-in-a-child" not in log.read_text()


def test_the_daemon_hides_the_configured_password_variable(monkeypatch):
    from iscsi_ha.controller.config import Config, VipConfig, XenApiConfig
    from iscsi_ha.controller.daemon import build_systems
    from iscsi_ha.controller.systems.runner import CommandStats

    monkeypatch.setenv("MY_XAPI_PW", "pw-never-in-a-child")
    cfg = Config(
        resources=("r0",),
        vip=VipConfig("10.0.0.3/24"),
        xenapi=XenApiConfig(enabled=False, password_env="MY_XAPI_PW"),
    )
    built = build_systems(cfg, CommandStats())
    runner = built.systems.drbd.runner
    assert (
        runner.run(
            [sys.executable, "-c", "import os; print(os.environ.get('MY_XAPI_PW'))"]
        ).stdout.strip()
        == "None"
    )


# ------------------------------------------------------------------ observe() never raises


def test_vip_observe_turns_any_exception_into_an_error(monkeypatch):
    from fakes import FakeRunner
    from iscsi_ha.controller.systems import vip as vip_mod
    from iscsi_ha.controller.systems.vip import Vip

    fake = FakeRunner()
    fake.answer(("ip",), stdout="2: eth0    inet 10.0.0.1/24 scope global eth0\n")

    def broken(text, address):
        raise RuntimeError("a parser bug")

    monkeypatch.setattr(vip_mod, "parse_addr_show", broken)
    obs = Vip(fake, address="10.0.0.3/24", interface="eth0").observe()
    assert obs.local is False and "a parser bug" in obs.error


def test_sr_observe_turns_any_exception_into_an_error(monkeypatch):
    from iscsi_ha.controller.systems import sr as sr_mod

    class Client:
        def call(self, method, *args):
            return {}

    def broken(*args, **kw):
        raise KeyError("uuid")

    monkeypatch.setattr(sr_mod, "build_sr_observation", broken)
    obs = sr_mod.SrAdapter(Client()).observe()
    assert obs.reachable and "cannot read the SRs" in obs.error


# ------------------------------------------------------------------ files read capped


def _in_thread(fn, timeout=5.0):
    import threading

    out = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} blocked"
    return out[0]


def test_pool_conf_fifo_or_device_is_an_unknown_role_at_once(tmp_path):
    import os

    from iscsi_ha.controller.systems.pool import read_pool_conf

    fifo = tmp_path / "pool.conf"
    os.mkfifo(fifo)
    obs = _in_thread(lambda: read_pool_conf(str(fifo)))
    assert obs.role.value == "unknown" and "FIFO" in obs.detail
    obs = _in_thread(lambda: read_pool_conf("/dev/zero"))
    assert obs.role.value == "unknown" and "character device" in obs.detail


def test_password_file_fifo_is_a_config_error_naming_the_file(tmp_path):
    import os

    import pytest
    from iscsi_ha.controller.config import Config, ConfigError, VipConfig, XenApiConfig
    from iscsi_ha.controller.config import read_xenapi_password as read_pw

    fifo = tmp_path / "pw"
    os.mkfifo(fifo)
    cfg = Config(
        resources=("r0",),
        vip=VipConfig("10.0.0.3/24"),
        xenapi=XenApiConfig(password_file=str(fifo), password_env=None),
    )

    def read():
        with pytest.raises(ConfigError) as info:
            read_pw(cfg, environ={})
        return str(info.value)

    text = _in_thread(read)
    assert str(fifo) in text and "FIFO" in text
