"""A wall-clock step (NTP, ``date -s``) must not stall the controller's loop.

APScheduler keeps next run times in wall-clock time and sleeps on the monotonic clock: after a
step back of an hour it slept an hour -- found by lab/chaos.py's clock-jump fault (regression
schedule in tests/test_chaos.py). The daemon notices the step and runs every job at once."""

import datetime
import threading
from types import SimpleNamespace

from iscsi_ha.controller.daemon import CLOCK_STEP, ClockStepGuard, Daemon


def test_the_guard_sees_steps_both_ways_and_ignores_jitter():
    guard = ClockStepGuard(wall=1000.0, mono=50.0)
    assert guard.step(1000.5, 50.5) == 0.0  # time passing
    assert guard.step(1001.0 + CLOCK_STEP / 2, 51.0) == 0.0  # jitter, a slow NTP slew
    assert guard.step(1001.0 + CLOCK_STEP / 2 - 3600, 51.5) == -3600.5  # a step back
    assert guard.step(2000.0, 52.0) > 3600 - 1  # and forward again
    assert guard.step(2000.5, 52.5) == 0.0  # once


def test_a_job_left_an_hour_ahead_by_a_step_back_runs_at_once():
    from apscheduler.schedulers.background import BackgroundScheduler

    utc = datetime.timezone.utc
    ran = threading.Event()
    scheduler = BackgroundScheduler(timezone=utc)
    # What a step back of an hour leaves: the next run an hour away in wall-clock time.
    later = datetime.datetime.now(utc) + datetime.timedelta(hours=1)
    scheduler.add_job(ran.set, "interval", seconds=1, id="cycle", next_run_time=later)
    scheduler.start()
    try:
        assert not ran.wait(1.5)  # stalled: the scheduler sleeps until the old time
        Daemon.rebase_jobs(SimpleNamespace(scheduler=scheduler), -3600.0)
        assert ran.wait(5), "the job did not run after the step was noticed"
        job = scheduler.get_job("cycle")
        assert job.next_run_time < datetime.datetime.now(utc) + datetime.timedelta(seconds=5)
    finally:
        scheduler.shutdown(wait=False)
