"""A chaos run split into shards that run side by side, then added up (``make chaos``).

    python -m lab.chaos_shards --seed 1 --schedules 500 --shards 4 --out /tmp/chaos-full
    python -m lab.chaos_shards ... --resume          (after a stop: only what is not recorded)

Shard ``k`` runs its contiguous share of the schedule numbers in its own namespace lab
(``python -m lab.chaos --first F --schedules N --record OUT/record-k.jsonl``), its output in
``OUT/shard-k.out`` and its failed schedules' logs under ``OUT/logs-k``. Schedule ``i`` of a seed
is the same whichever shard runs it (``lab.chaos.draw_schedule``), so the total is the run
``--schedules`` would be in one process; most of a schedule is waiting (faults held, convergence),
so shards finish several times sooner on two cores. The total (``lab.chaos_record``) refuses
records of another commit or a missing schedule. Arguments after ``--`` go to every shard,
e.g. ``-- --write-timeout 8``. SIGTERM/SIGINT stop every shard (each tears its lab down).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from . import chaos_record

ROOT = Path(__file__).resolve().parent.parent


def shares(first: int, count: int, shards: int) -> List[Tuple[int, int]]:
    """``count`` schedule numbers from ``first`` in ``shards`` contiguous (first, count) parts."""
    shards = max(1, min(shards, count))
    base, extra = divmod(count, shards)
    out, start = [], first
    for k in range(shards):
        n = base + (1 if k < extra else 0)
        out.append((start, n))
        start += n
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passed: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passed = argv[:cut], argv[cut + 1 :]
    ap = argparse.ArgumentParser(
        prog="python -m lab.chaos_shards", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--schedules", type=int, default=500)
    ap.add_argument("--shards", type=int, default=4, help="labs running side by side")
    ap.add_argument("--out", default="/tmp/iscsi-ha-chaos-shards", help="records, output, logs")
    ap.add_argument("--json", help="also write the total here")
    ap.add_argument("--resume", action="store_true", help="skip schedules already recorded")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    procs: List[subprocess.Popen] = []
    records: List[Path] = []
    t0 = time.monotonic()

    def stop(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.terminate()  # lab.chaos tears its lab down on SIGTERM

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    for k, (first, count) in enumerate(shares(args.first, args.schedules, args.shards)):
        record = out / f"record-{k}.jsonl"
        records.append(record)
        cmd = [
            sys.executable,
            "-m",
            "lab.chaos",
            "--seed",
            str(args.seed),
            "--first",
            str(first),
            "--schedules",
            str(count),
            "--record",
            str(record),
            "--out",
            str(out / f"logs-{k}"),
            *(["--resume"] if args.resume else []),
            *passed,
        ]
        with open(out / f"shard-{k}.out", "a", encoding="utf-8") as log:
            procs.append(
                subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
        print(f"shard {k}: schedules {first}-{first + count - 1}, output {out}/shard-{k}.out")
    codes = [p.wait() for p in procs]
    minutes = (time.monotonic() - t0) / 60
    try:
        total = chaos_record.total(
            chaos_record.read(records), args.seed, args.first, args.schedules
        )
    except ValueError as exc:
        print(f"chaos_shards: {exc} (shard exit codes {codes})", file=sys.stderr)
        return 2
    total["minutes"] = round(minutes, 1)
    total["shards"] = len(procs)
    print(json.dumps(total, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(total, indent=2) + "\n")
    bad = total["failed_schedules"] or total["acknowledged_writes_lost"]
    return 1 if bad or any(codes) else 0


if __name__ == "__main__":
    sys.exit(main())
