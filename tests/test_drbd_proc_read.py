"""The daemon reads /proc/drbd in its own process (``read_proc_directly``), not through ``cat``:
the same answers as the runner path, on the real captures, without a process."""

from pathlib import Path

from drbd_captures import PROC_DRBD, read_frames
from fakes import FakeRunner
from iscsi_ha.controller.systems.drbd import Drbd
from iscsi_ha.controller.systems.drbd.adapter import read_proc_file

FIXTURES = Path(__file__).parent / "fixtures" / "drbd84"


def test_missing_file_reads_like_cat(tmp_path):
    res = read_proc_file(str(tmp_path / "proc_drbd"))
    assert res.rc == 1 and "No such file or directory" in res.stderr
    assert res.command == f"`cat {tmp_path / 'proc_drbd'}`"
    # ... so the adapter still says "not loaded": every resource unconfigured, no error.
    drbd = Drbd(
        FakeRunner(), version="8.4", proc_drbd=str(tmp_path / "proc_drbd"), read_proc_directly=True
    )
    (r,) = drbd.observe(["iscsi1"])
    assert r.configured is False and r.error is None


def test_every_proc_capture_observes_the_same_both_ways(tmp_path):
    frames = [
        f
        for path in sorted(FIXTURES.glob("proc-drbd-*.txt"))
        for f in read_frames(path)
        if f.command == PROC_DRBD and f.rc == 0
    ]
    assert len(frames) > 5, "the /proc/drbd samples are missing"
    clean = 0
    for i, frame in enumerate(frames):
        path = tmp_path / f"proc-{i}"
        path.write_text(frame.stdout)
        runner = FakeRunner()
        runner.answer(("cat", str(path)), stdout=frame.stdout)
        runner.answer(("drbdadm", "sh-minor", "iscsi1"), stdout="0\n")
        via_cat = Drbd(runner, version="8.4", proc_drbd=str(path)).observe(["iscsi1"])
        direct_runner = FakeRunner()
        direct_runner.answer(("drbdadm", "sh-minor", "iscsi1"), stdout="0\n")
        direct = Drbd(
            direct_runner, version="8.4", proc_drbd=str(path), read_proc_directly=True
        ).observe(["iscsi1"])
        assert direct == via_cat, frame.stdout
        assert not direct_runner.ran("cat"), "read_proc_directly must not start cat"
        clean += direct[0].error is None and direct[0].configured
    assert clean == len(frames)
