"""Hostile state files (#16): a damaged manual-mode file is manual mode, always, and the CLI can
repair it; ``status_file`` never replaces a device node.

Before: a non-UTF-8 byte, a 400-digit number or deep nesting in ``manual-mode.json`` made every
cycle fail while ``status`` said manual mode was off, and the CLI could not repair it; a FIFO
there froze the controller; ``status_file: /dev/...`` replaced the node with a regular file.
"""

import os
import threading

import pytest
from iscsi_ha.controller.model import ManualMode, Outcome, StorageRole
from iscsi_ha.controller.state import MANUAL_MODE_FILE, ManualModeStore, atomic_write
from test_cycle import make
from worlds import world

DAMAGED = {
    "not-utf8": b'{"enabled": false, "requested": "pri\xffmary"}',
    "400-digit-since": b'{"enabled": false, "since": 1' + b"0" * 400 + b"}",
    "400-digit-float-since": b'{"enabled": false, "since": 1' + b"0" * 400 + b".0}",
    "deep": b'{"enabled": false, "x": ' + b"[" * 20000 + b"]" * 20000 + b"}",
    "enabled-string": b'{"enabled": "false"}',
    "requested-bogus": b'{"enabled": false, "requested": "tertiary"}',
    "since-nan": b'{"enabled": false, "since": NaN}',
    "since-list": b'{"enabled": false, "since": [1]}',
    "list": b"[]",
    "empty": b"",
    "nul": b"\0\0\0",
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_file_is_manual_mode_with_a_reason(tmp_path, name):
    (tmp_path / MANUAL_MODE_FILE).write_bytes(DAMAGED[name])
    mode, problem = ManualModeStore(str(tmp_path)).load()
    assert mode == ManualMode(enabled=True)
    assert problem and "damaged" in problem and MANUAL_MODE_FILE in problem


@pytest.mark.parametrize("kind", ["fifo", "directory", "huge"])
def test_unreadable_kinds_are_manual_mode_at_once(tmp_path, kind):
    path = tmp_path / MANUAL_MODE_FILE
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b" " * (1024 * 1024))
    out = []
    t = threading.Thread(
        target=lambda: out.append(ManualModeStore(str(tmp_path)).load()), daemon=True
    )
    t.start()
    t.join(5)
    assert not t.is_alive(), "load() blocked"
    mode, problem = out[0]
    assert mode.enabled and problem and "manual mode" in problem


def _controller(tmp_path, **settings):
    """A master that would promote (the cycle tests' fake world); returns (controller, fake)."""
    ctl, fake, _, _ = make(tmp_path, world(), **settings)
    return ctl, fake


@pytest.mark.parametrize("name", ["not-utf8", "400-digit-since", "deep"])
def test_cycle_holds_in_manual_mode_and_the_cli_repairs_it(tmp_path, name):
    controller, fake = _controller(tmp_path)
    path = tmp_path / "state" / MANUAL_MODE_FILE
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(DAMAGED[name])
    result = controller.run_cycle()
    assert result.outcome is not Outcome.ERROR, result.message
    assert "damaged" in result.message and fake.calls == []  # manual mode: nothing moved
    snap = controller.snapshot()
    assert snap.manual.enabled  # status says manual mode, as the controller acts
    code, message = controller.command("manual-mode-enable")
    assert code == 0, message
    assert ManualModeStore(str(tmp_path / "state")).load() == (
        ManualMode(enabled=True, requested=None, since=controller.snapshot().manual.since),
        None,
    )


def test_a_fifo_manual_mode_file_is_repaired_by_the_cli(tmp_path):
    controller, fake = _controller(tmp_path)
    path = tmp_path / "state" / MANUAL_MODE_FILE
    path.parent.mkdir(exist_ok=True)
    os.mkfifo(path)
    out = []
    t = threading.Thread(target=lambda: out.append(controller.run_cycle()), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "a FIFO as the manual-mode file froze the cycle"
    assert out[0].outcome is not Outcome.ERROR and "FIFO" in out[0].message
    assert controller.command("manual-mode-enable")[0] == 0
    assert path.is_file() and ManualModeStore(str(path.parent)).load()[1] is None


@pytest.mark.root  # mknod
def test_status_file_never_replaces_a_device_node(tmp_path):
    dev = tmp_path / "null"
    os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # a character device, like /dev/null
    with pytest.raises(OSError) as info:
        atomic_write(str(dev), "HOST ROLE: MASTER\n")
    assert "character device" in str(info.value)
    assert os.stat(dev).st_rdev == os.makedev(1, 3) and not dev.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["null"]  # no temporary file left behind


@pytest.mark.root  # mknod
def test_the_cycle_keeps_running_with_status_file_on_a_device(tmp_path, caplog):
    dev = tmp_path / "status"
    os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))
    controller, fake = _controller(tmp_path)  # its status_file is tmp_path/status
    result = controller.run_cycle()
    assert result.outcome is not Outcome.ERROR
    assert not dev.is_file() and os.stat(dev).st_rdev == os.makedev(1, 3)
    assert "character device" in caplog.text
    # Said once, not every cycle.
    for _ in range(3):
        controller.run_cycle()
    assert caplog.text.count("cannot write status file") == 1


def test_a_read_only_status_file_directory_is_logged_once(tmp_path, caplog, monkeypatch):
    """EROFS from mkstemp names the temporary file it tried, a new one each cycle: that is still
    one problem, said once (it was said every cycle), and once more when writes work again."""
    controller, fake = _controller(tmp_path)
    caplog.set_level("INFO")
    tries = iter(range(1000))

    def read_only(directory, text, mode, prefix=".tmp-"):
        raise OSError(30, "Read-only file system", f"{directory}/.tmp-{next(tries)}")

    with monkeypatch.context() as patch:
        patch.setattr("iscsi_ha.controller.state.write_temp", read_only)
        for _ in range(4):
            assert controller.run_cycle().outcome is not Outcome.ERROR
    assert caplog.text.count("cannot write status file") == 1
    assert caplog.text.count("cannot write the ledger") == 1  # the same directory's other file
    assert "Read-only file system" in caplog.text
    controller.run_cycle()
    again = [m for m in caplog.messages if "written again" in m]
    assert len(again) == 2 and (tmp_path / "status").is_file(), again  # status file and ledger


def test_manual_mode_store_round_trips():
    mode = ManualMode(enabled=True, requested=StorageRole.SECONDARY, since=1764064800.0)
    from iscsi_ha.controller.state import parse_manual_mode, render_manual_mode

    assert parse_manual_mode(render_manual_mode(mode)) == mode
