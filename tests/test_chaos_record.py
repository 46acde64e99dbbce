"""The chaos run's record (lab/chaos_record.py): shards and resumed parts add up to one total
only when they are one run of one code and no schedule is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # lab/ is imported from the repository root
    sys.path.append(str(REPO))

from lab import chaos_record  # noqa: E402
from lab.chaos import draw_schedule  # noqa: E402


def outcome(index, ok=True, acked=5):
    return SimpleNamespace(
        index=index,
        faults=draw_schedule(1, index),
        ok=ok,
        violations=[] if ok else ["t+1.00s two Primaries"],
        lost=[],
        converged=True,
        acked=acked,
        failed_writes=0,
        period=0.0105,
        sample_cost=0.0015,
        longest_gap=0.1,
        samples=600,
        slow_samples=0,
        seconds=9.0,
        note="",
    )


def test_shards_add_up_to_the_same_total_as_one_file(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for i in range(0, 3):
        chaos_record.append(a, 1, "c0ffee", outcome(i))
    for i in range(3, 6):
        chaos_record.append(b, 1, "c0ffee", outcome(i, ok=i != 4))
    with open(b, "a") as fh:
        fh.write('{"seed": 1, "index": 6, "ok"')  # a run killed while writing its last line
    total = chaos_record.total(chaos_record.read([a, b]), seed=1, first=0, count=6)
    assert total["schedules"] == 6 and total["commit"] == "c0ffee"
    assert total["acknowledged_writes"] == 30 and total["failed_schedules"] == [4]
    assert total["invariant_violations"] == 1
    kinds = [f.kind for i in range(6) for f in draw_schedule(1, i)]
    assert total["faults_injected"] == len(kinds)
    assert sum(total["faults_by_kind"].values()) == len(kinds)
    assert chaos_record.done_indices(b, 1, "c0ffee") == {3, 4, 5}
    assert chaos_record.done_indices(b, 1, "other") == set()  # resuming other code redoes all


def test_a_gap_or_two_commits_is_refused_with_what_is_wrong(tmp_path):
    rec = tmp_path / "r.jsonl"
    for i in (0, 1, 3):
        chaos_record.append(rec, 1, "c0ffee", outcome(i))
    with pytest.raises(ValueError, match="1 of schedules 0-3 missing: 2"):
        chaos_record.total(chaos_record.read([rec]), seed=1, first=0, count=4)
    chaos_record.append(rec, 1, "beef", outcome(2))
    with pytest.raises(ValueError, match="mixes commits beef, c0ffee"):
        chaos_record.total(chaos_record.read([rec]), seed=1, first=0, count=4)
    assert chaos_record.main(["--schedules", "4", str(rec)]) == 2


def test_a_line_names_the_schedule_so_it_can_be_run_again(tmp_path):
    rec = tmp_path / "r.jsonl"
    chaos_record.append(rec, 1, "c0ffee", outcome(7))
    line = json.loads(rec.read_text())
    assert line["faults"] == [f.spec() for f in draw_schedule(1, 7)]
    assert line["index"] == 7 and line["seed"] == 1 and line["commit"] == "c0ffee"


def test_the_commit_says_dirty_when_tracked_files_differ():
    commit = chaos_record.code_commit()
    assert commit == "unknown" or len(commit.split("-")[0]) == 40


def test_shards_cover_every_schedule_once():
    from lab.chaos_shards import shares

    for first, count, shards in ((0, 500, 4), (250, 7, 3), (0, 3, 8), (10, 1, 1)):
        parts = shares(first, count, shards)
        numbers = [i for f, n in parts for i in range(f, f + n)]
        assert numbers == list(range(first, first + count))
        assert len(parts) == min(shards, count) and all(n > 0 for _, n in parts)
        assert max(n for _, n in parts) - min(n for _, n in parts) <= 1
