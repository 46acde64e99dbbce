"""Run a program with its own wall clock, for ``lab/chaos.py``'s clock jumps.

    python lab/chaos_clock.py OFFSET_FILE PROGRAM [ARGS...]

The machine's clock is shared by everything on it, so a jump is given to one controller only:
libfaketime (Debian's ``libfaketime``) is preloaded into this interpreter and reads the wall-clock
offset from OFFSET_FILE (``+0``, ``-3600``, ``+7200``: seconds), re-read at most once a second;
the chaos runner rewrites the file to make the clock jump. Only CLOCK_REALTIME moves (an NTP
step or an administrator's ``date -s``); the monotonic clock is never faked, as the kernel never
steps it.

Two workarounds, both for libfaketime 0.9.10, not for the program:

* with the monotonic clock left alone, its ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)``
  fails with EINVAL, and CPython 3.11's ``time.sleep`` uses exactly that; ``time.sleep`` here
  waits on an Event instead (a condition wait, which libfaketime passes through correctly);
* the program's children (drbdadm, tgtd, ip) run without the preload: the jump is the
  controller's view of the time, and the simulator's own sleeps would fail the same way.

PROGRAM is a Python script (``iscsi-ha``'s entry point), run in this interpreter as ``__main__``.
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time
from typing import Dict

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


def environment(offset_file: str) -> Dict[str, str]:
    """What to start ``chaos_clock.py`` with so that libfaketime is loaded and reads the file."""
    return {
        "LD_PRELOAD": LIBFAKETIME,
        "FAKETIME_TIMESTAMP_FILE": offset_file,
        "FAKETIME_CACHE_DURATION": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(seconds)


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    program = sys.argv[2]
    # Children run on the real clock: without the preload (libfaketime itself keeps reading its
    # FAKETIME_* variables from this process's environment, so those stay).
    os.environ.pop("LD_PRELOAD", None)
    time.sleep = _sleep  # type: ignore[assignment]
    sys.argv = sys.argv[2:]
    runpy.run_path(program, run_name="__main__")


if __name__ == "__main__":
    main()
