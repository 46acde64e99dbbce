"""Readers for the real DRBD captures in ``tests/fixtures/drbd84`` and ``tests/fixtures/drbd92``.

The captures come in the shapes the lab recorded them in (none of them is DRBD's own format):

* DRBD 9 (``drbd92/NN-*.txt``): ``$ command`` / ``rc=N`` / ``--- stdout`` / ... / ``--- stderr`` /
  ... / ``=== end``, with ``# step=...`` comment lines between frames;
* DRBD 8.4 states (``drbd84/state-*.txt``): ``$ command`` / ``(rc=N)`` / output / blank line
  (stdout and stderr merged);
* DRBD 8.4 experiments: ``[node1] $ command`` / ``(rc=N, 0.77s)`` / output / blank line, with the
  experimenter's notes between frames (ignored);
* /proc/drbd samples: ``--- t+  1.04s rc=0`` / output (the command is ``cat /proc/drbd``).

``load_capture(path)`` gives ``{command: (rc, stdout, stderr)}`` and ``install(fake, capture)``
turns that into FakeRunner answers, so decide/cycle/lab tests can replay what real DRBD said.
``rename={"r0": "iscsi1"}`` renames the captured resource in commands and outputs.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

FIXTURES = Path(__file__).parent / "fixtures"
DRBD84 = FIXTURES / "drbd84"
DRBD92 = FIXTURES / "drbd92"
DRBD92_JSON = FIXTURES / "drbd92-json"

PROC_DRBD = "cat /proc/drbd"


@dataclass(frozen=True)
class Frame:
    command: str
    rc: int
    stdout: str
    stderr: str = ""
    node: Optional[str] = None  # "[node1] $ ..." in the 8.4 experiments
    t: Optional[float] = None  # "--- t+  1.04s" in the /proc/drbd samples


_HEADER_84 = re.compile(r"^(?:\[(?P<node>[^\]]+)\] )?\$ (?P<command>.*)$")
_RC_84 = re.compile(r"^\(rc=(?P<rc>-?\d+)(?:, [\d.]+s)?\)$")
_SAMPLE = re.compile(r"^--- t\+\s*(?P<t>[\d.]+)s rc=(?P<rc>-?\d+)$")


def _join(lines: List[str]) -> str:
    return "\n".join(lines) + "\n" if lines else ""


def _frames_92(text: str) -> List[Frame]:
    frames = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            i += 1
            continue
        command = lines[i][2:]
        rc_line = lines[i + 1]
        if not rc_line.startswith("rc=") or lines[i + 2] != "--- stdout":
            raise ValueError(f"bad frame at line {i + 1}: {lines[i : i + 3]!r}")
        j = i + 3
        out: List[str] = []
        while lines[j] != "--- stderr":
            out.append(lines[j])
            j += 1
        j += 1
        err: List[str] = []
        while lines[j] != "=== end":
            err.append(lines[j])
            j += 1
        frames.append(Frame(command, int(rc_line[3:]), _join(out), _join(err)))
        i = j + 1
    return frames


def _frames_84(text: str) -> List[Frame]:
    frames = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        head = _HEADER_84.match(lines[i])
        rc = _RC_84.match(lines[i + 1]) if head and i + 1 < len(lines) else None
        if not head or not rc:
            i += 1  # notes between frames
            continue
        j = i + 2
        out: List[str] = []
        # Outputs end at a blank line (none of the captured outputs contains one).
        while j < len(lines) and lines[j].strip() and not _HEADER_84.match(lines[j]):
            out.append(lines[j])
            j += 1
        frames.append(
            Frame(head.group("command"), int(rc.group("rc")), _join(out), "", head.group("node"))
        )
        i = j
    return frames


def _frames_samples(text: str) -> List[Frame]:
    frames: List[Frame] = []
    current: Optional[Tuple[float, int]] = None
    out: List[str] = []
    for line in text.splitlines():
        sample = _SAMPLE.match(line)
        if sample:
            if current:
                frames.append(Frame(PROC_DRBD, current[1], _join(out), t=current[0]))
            current, out = (float(sample.group("t")), int(sample.group("rc"))), []
        elif current:
            out.append(line)
    if current:
        frames.append(Frame(PROC_DRBD, current[1], _join(out), t=current[0]))
    return frames


def read_frames(path: Union[str, Path]) -> List[Frame]:
    """Every command frame of a capture file, in order (duplicates kept)."""
    text = Path(path).read_text()
    if re.search(r"^=== end$", text, re.M):
        return _frames_92(text)
    if re.search(r"^--- t\+", text, re.M):
        return _frames_samples(text)
    return _frames_84(text)


def _renamed(text: str, rename: Optional[Mapping[str, str]]) -> str:
    for old, new in (rename or {}).items():
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(old)}(?![A-Za-z0-9])", new, text)
    return text


def load_capture(
    path: Union[str, Path], rename: Optional[Mapping[str, str]] = None
) -> Dict[str, Tuple[int, str, str]]:
    """``{command: (rc, stdout, stderr)}`` of one capture file. A command captured twice with
    different results is ambiguous and raises (use ``read_frames`` for such files)."""
    out: Dict[str, Tuple[int, str, str]] = {}
    for frame in read_frames(path):
        command = _renamed(frame.command, rename)
        value = (frame.rc, _renamed(frame.stdout, rename), _renamed(frame.stderr, rename))
        if command in out and out[command] != value:
            raise ValueError(f"{path}: {command!r} captured twice with different results")
        out[command] = value
    return out


def install(fake, capture: Mapping[str, Tuple[int, str, str]]) -> None:
    """Make a ``FakeRunner`` answer each captured command (matched on its whole argv)."""
    for command, (rc, stdout, stderr) in capture.items():
        fake.answer(tuple(shlex.split(command)), rc=rc, stdout=stdout, stderr=stderr)
