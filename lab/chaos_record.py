"""The chaos runner's record: one JSON line per finished schedule, so a long run is resumable and
shardable, and its parts add up to one honest total.

    python -m lab.chaos --seed 1 --first 0 --schedules 250 --record a.jsonl
    python -m lab.chaos --seed 1 --first 250 --schedules 250 --record b.jsonl
    python -m lab.chaos_record --seed 1 --schedules 500 a.jsonl b.jsonl     (the total)

Schedule ``i`` of seed ``s`` depends on nothing else (``lab.chaos.draw_schedule``), so shards run
in any order or in parallel are the same schedules as one run. Each line names the git commit
under test (``-dirty`` when tracked files differ from it): the total refuses to add up lines of
different commits, or to call a range complete when a schedule is missing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set

ROOT = Path(__file__).resolve().parent.parent


def code_commit(root: Path = ROOT) -> str:
    """HEAD's commit, with ``-dirty`` when tracked files differ from it; ``unknown`` without git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(root), "diff", "--quiet", "HEAD", "--"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.returncode != 0 else "")


def line_for(seed: int, commit: str, out: Any) -> Dict[str, Any]:
    """One finished schedule (a ``lab.chaos.Outcome``) as a record line."""
    return {
        "seed": seed,
        "commit": commit,
        "index": out.index,
        "faults": [f.spec() for f in out.faults],
        "kinds": [f.kind for f in out.faults],
        "ok": out.ok,
        "violations": list(out.violations),
        "lost": len(out.lost),
        "converged": out.converged,
        "acked": out.acked,
        "failed_writes": out.failed_writes,
        "period_ms": round(1000 * out.period, 2),
        "sample_cost_ms": round(1000 * out.sample_cost, 2),
        "longest_gap_ms": round(1000 * out.longest_gap, 1),
        "samples": out.samples,
        "slow_samples": out.slow_samples,
        "seconds": round(out.seconds, 2),
        "note": out.note,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def append(path: Path, seed: int, commit: str, out: Any) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line_for(seed, commit, out)) + "\n")
        fh.flush()


def read(paths: Iterable[Path]) -> List[Dict[str, Any]]:
    """Every line of every file; a half-written last line (a run killed mid-write) is skipped."""
    lines: List[Dict[str, Any]] = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        for raw in text.splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("index"), int):
                lines.append(entry)
    return lines


def done_indices(path: Path, seed: int, commit: str) -> Set[int]:
    return {e["index"] for e in read([path]) if e.get("seed") == seed and e.get("commit") == commit}


def total(lines: Sequence[Dict[str, Any]], seed: int, first: int, count: int) -> Dict[str, Any]:
    """The summary of schedules ``first .. first+count-1`` of ``seed`` from record lines.

    Raises ValueError naming what does not add up: lines of several commits, or schedules missing.
    A schedule recorded twice (a resumed shard that overlapped) counts once, its last line."""
    wanted = range(first, first + count)
    by_index: Dict[int, Dict[str, Any]] = {}
    for e in lines:
        if e.get("seed") == seed and e["index"] in wanted:
            by_index[e["index"]] = e
    commits = sorted({e.get("commit", "unknown") for e in by_index.values()})
    if len(commits) > 1:
        raise ValueError(f"the record mixes commits {', '.join(commits)}: not one run of one code")
    missing = [i for i in wanted if i not in by_index]
    if missing:
        shown = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise ValueError(
            f"{len(missing)} of schedules {first}-{first + count - 1} missing: {shown}"
        )
    kinds: Dict[str, int] = {}
    for e in by_index.values():
        for k in e["kinds"]:
            kinds[k] = kinds.get(k, 0) + 1
    entries = [by_index[i] for i in wanted]
    periods = sorted(e["period_ms"] for e in entries)
    costs = sorted(e["sample_cost_ms"] for e in entries)
    return {
        "seed": seed,
        "commit": commits[0] if commits else None,
        "schedules": count,
        "faults_injected": sum(kinds.values()),
        "faults_by_kind": dict(sorted(kinds.items())),
        "invariant_violations": sum(len(e["violations"]) for e in entries),
        "acknowledged_writes": sum(e["acked"] for e in entries),
        "acknowledged_writes_lost": sum(e["lost"] for e in entries),
        "did_not_converge": sum(0 if e["converged"] else 1 for e in entries),
        "failed_schedules": [e["index"] for e in entries if not e["ok"]],
        "sampling_period_ms_median": periods[len(periods) // 2] if periods else None,
        "sample_cost_ms_median": costs[len(costs) // 2] if costs else None,
        "longest_sampling_gap_ms": max(e["longest_gap_ms"] for e in entries) if entries else None,
        "samples": sum(e["samples"] for e in entries),
        "slow_samples_not_judged": sum(e["slow_samples"] for e in entries),
        "schedule_seconds_median": sorted(e["seconds"] for e in entries)[len(entries) // 2]
        if entries
        else None,
        "first_finished": min(e["finished"] for e in entries) if entries else None,
        "last_finished": max(e["finished"] for e in entries) if entries else None,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lab.chaos_record",
        description="Add up the record files of a chaos run (its shards or resumed parts) into "
        "one summary; fails, saying why, when schedules are missing or commits differ.",
    )
    ap.add_argument("records", nargs="+", help="JSON-lines files written by lab.chaos --record")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--schedules", type=int, default=500)
    args = ap.parse_args(argv)
    try:
        summary = total(read(Path(p) for p in args.records), args.seed, args.first, args.schedules)
    except ValueError as exc:
        print(f"chaos_record: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    failed = summary["failed_schedules"] or summary["invariant_violations"]
    return 1 if failed or summary["acknowledged_writes_lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
