"""pool.conf watched through the real kernel's inotify: every way xapi (or an operator) can
change the file wakes the owner once per content change, and nothing else does."""

import os
import struct
import threading
import time

import pytest
from iscsi_ha.controller.systems import filewatch
from iscsi_ha.controller.systems.filewatch import FileWatch, parse_events


class Counter:
    def __init__(self):
        self.count = 0
        self.cond = threading.Condition()

    def __call__(self):
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def wait_for(self, n, limit=5.0):
        with self.cond:
            assert self.cond.wait_for(lambda: self.count >= n, timeout=limit), (
                f"expected {n} wake-ups, saw {self.count}"
            )


@pytest.fixture
def watched(tmp_path):
    made = []

    def make(path, **kw):
        counter = Counter()
        watch = FileWatch(str(path), counter, **kw)
        watch.start()
        made.append(watch)
        return watch, counter

    yield make
    for watch in made:
        watch.stop()


def replace(path, text):
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.rename(tmp, path)


def wait_mode(watch, mode, limit=5.0):
    deadline = time.monotonic() + limit
    while watch.mode != mode and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watch.mode == mode


def test_in_place_write_rename_delete_and_recreate_each_wake(tmp_path, watched):
    conf = tmp_path / "pool.conf"
    conf.write_text("master")
    watch, seen = watched(conf, poll_period=60)  # inotify alone (the backstop poll is tested below)
    wait_mode(watch, "inotify")
    conf.write_text("slave:10.0.0.1")  # rewritten in place
    seen.wait_for(1)
    tmp = tmp_path / ".pool.conf.tmp"
    tmp.write_text("master")
    os.rename(tmp, conf)  # replaced atomically
    seen.wait_for(2)
    conf.unlink()
    seen.wait_for(3)
    assert watch.last is None
    conf.write_text("master")  # created in place: woken by the writer's close, not the create
    seen.wait_for(4)
    assert watch.last == "master"


def test_same_content_and_other_files_wake_nobody(tmp_path, watched):
    conf = tmp_path / "pool.conf"
    conf.write_text("master")
    watch, seen = watched(conf, poll_period=60)
    wait_mode(watch, "inotify")
    conf.write_text("master")  # same text: xapi rewriting what was there
    os.utime(conf)
    (tmp_path / "other").write_text("x")
    replace(conf, "slave:10.0.0.1")  # the one real change, after the others (atomic, so that
    seen.wait_for(1)  # a slow reader cannot catch it half-written)
    time.sleep(0.2)  # anything queued by the no-op writes would have arrived by now
    assert seen.count == 1


def test_missing_directory_polls_then_switches_to_inotify(tmp_path, watched):
    conf = tmp_path / "later" / "pool.conf"
    watch, seen = watched(conf, poll_period=0.05)
    wait_mode(watch, "poll")
    conf.parent.mkdir()
    wait_mode(watch, "inotify")
    conf.write_text("master")
    seen.wait_for(1)


def test_directory_replaced_rearms_the_watch(tmp_path, watched):
    etc = tmp_path / "xensource"
    etc.mkdir()
    (etc / "pool.conf").write_text("master")
    watch, seen = watched(etc / "pool.conf", poll_period=0.05)
    wait_mode(watch, "inotify")
    (etc / "pool.conf").unlink()
    etc.rmdir()
    seen.wait_for(1)  # the file is gone: content None
    etc.mkdir()
    (etc / "pool.conf").write_text("slave:10.0.0.2")
    seen.wait_for(2)
    assert watch.last == "slave:10.0.0.2"


def test_poll_fallback_without_inotify(tmp_path, watched):
    conf = tmp_path / "pool.conf"
    conf.write_text("master")
    watch, seen = watched(conf, poll_period=0.02, use_inotify=False)
    wait_mode(watch, "poll")
    conf.write_text("broken")
    seen.wait_for(1)


def test_stop_is_prompt_and_final(tmp_path):
    conf = tmp_path / "pool.conf"
    conf.write_text("master")
    seen = Counter()
    watch = FileWatch(str(conf), seen)
    watch.start()
    wait_mode(watch, "inotify")
    t0 = time.monotonic()
    watch.stop()
    assert time.monotonic() - t0 < 2.0
    assert watch.mode == "stopped" and not watch._thread.is_alive()
    conf.write_text("slave:10.0.0.1")
    time.sleep(0.1)
    assert seen.count == 0


def test_parse_events_reads_the_kernel_struct():
    def event(wd, mask, name):
        raw = name.encode() + b"\0" * (16 - len(name))
        return struct.pack("iIII", wd, mask, 0, len(raw)) + raw

    buf = event(1, filewatch.IN_CLOSE_WRITE, "pool.conf") + event(1, filewatch.IN_IGNORED, "")
    assert list(parse_events(buf)) == [
        (1, filewatch.IN_CLOSE_WRITE, "pool.conf"),
        (1, filewatch.IN_IGNORED, ""),
    ]


def test_a_change_inotify_cannot_see_is_found_by_the_poll(tmp_path, watched, monkeypatch):
    # A 9p or NFS file changed by another machine raises no inotify event: model it with a mask
    # that hears nothing, so only the backstop read can notice.
    monkeypatch.setattr(filewatch, "DIR_MASK", filewatch.IN_DELETE_SELF | filewatch.IN_ONLYDIR)
    conf = tmp_path / "pool.conf"
    conf.write_text("master")
    watch, seen = watched(conf, poll_period=0.05)
    wait_mode(watch, "inotify")
    replace(conf, "slave:10.0.0.1")
    seen.wait_for(1)
    assert watch.last == "slave:10.0.0.1"
