"""Fuzzing the DRBD parsers with mutated real captures (#16): no uncaught exception, ever.

The corpus is every real capture in ``tests/fixtures`` (DRBD 8.4 and 9.2: /proc/drbd, drbdadm
role/cstate/dstate/sh-minor, ``drbdsetup status --json``, kernel logs, refusals). Each parser gets
every text of the corpus (not only its own command's), then mutations of them:

* truncation at every line, and every line dropped in turn (exhaustive);
* byte flips, inserted bytes and non-UTF-8 bytes (decoded with replacement, as the runner does);
* every number replaced by a huge one (up to 5,000 digits), a negative one or a Unicode digit.

The contract: a parser returns a value or raises ``DrbdParseError``, whose message names the
command and quotes what it could not read; ``Drbd.observe`` never raises, and every resource it
cannot read carries an error that names the command. Cases run are printed (``pytest -s``).
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Tuple

import pytest
from drbd_captures import FIXTURES, read_frames
from fakes import FakeRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iscsi_ha.controller.systems import drbd as d
from iscsi_ha.controller.systems.drbd import Drbd, DrbdParseError

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _corpus() -> List[str]:
    texts = []
    paths = (
        sorted(FIXTURES.glob("drbd84/*.txt"))
        + sorted(FIXTURES.glob("drbd92/*.txt"))
        + sorted(FIXTURES.glob("fuzz-extra/drbd92/*.txt"))
    )
    for path in paths:
        try:
            frames = read_frames(path)
        except (ValueError, IndexError):
            frames = []
        texts.extend(f.stdout for f in frames if f.stdout)
        texts.extend(f.stderr for f in frames if f.stderr)
        if path.name.startswith("dmesg"):
            texts.append(path.read_text())
    texts.extend(p.read_text() for p in sorted(FIXTURES.glob("drbd92-json/*.json")))
    return sorted(set(texts))


CORPUS = _corpus()

# name -> (parser, command it names). find_split_brain accepts any text by contract.
PARSERS: Dict[str, Tuple[Callable[[str], object], str]] = {
    "role": (lambda t: d.parse_role(t, "drbdadm role r0"), "drbdadm role r0"),
    "cstate": (lambda t: d.parse_cstate(t, "drbdadm cstate r0"), "drbdadm cstate r0"),
    "dstate": (lambda t: d.parse_dstate(t, "drbdadm dstate r0"), "drbdadm dstate r0"),
    "proc_version": (lambda t: d.parse_proc_version(t), "cat /proc/drbd"),
    "proc_drbd": (lambda t: d.parse_proc_drbd(t), "cat /proc/drbd"),
    "status_json": (lambda t: d.parse_status_json(t), "drbdsetup status --json"),
    "sh_minor": (lambda t: d.parse_sh_minor(t, "drbdadm sh-minor r0"), "drbdadm sh-minor r0"),
    "split_brain": (lambda t: d.find_split_brain(t, {0: "r0"}), ""),
    "refusal": (d.parse_refusal, ""),
    "words": (d.drbd_words, ""),
    "unknown_resource": (lambda t: d.is_unknown_resource(10, t), ""),
}
RUN: Dict[str, int] = {}


def check(name: str, text: str) -> None:
    """One case: the parser returns, or rejects naming its command."""
    parser, command = PARSERS[name]
    RUN[name] = RUN.get(name, 0) + 1
    try:
        parser(text)
    except DrbdParseError as exc:
        assert command and f"`{command}`" in str(exc), (name, str(exc))


def check_all(text: str) -> None:
    for name in PARSERS:
        check(name, text)


def test_corpus_is_real_and_large():
    assert len(CORPUS) > 100
    assert any("version: 8.4" in t for t in CORPUS) and any('"role"' in t for t in CORPUS)


def test_truncation_at_every_line_and_every_line_dropped():
    for text in CORPUS:
        lines = text.splitlines(keepends=True)
        for i in range(len(lines) + 1):
            check_all("".join(lines[:i]))
            if i < len(lines):
                check_all("".join(lines[:i] + lines[i + 1 :]))
                check_all("".join(lines[:i]) + lines[i][: len(lines[i]) // 2])  # mid-line
    print(f"\nfuzz drbd truncation: {sum(RUN.values())} cases")


@FUZZ
@given(st.sampled_from(CORPUS), st.data())
def test_byte_flips_and_non_utf8(text, data):
    raw = bytearray(text.encode())
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        pos = data.draw(st.integers(0, max(0, len(raw))), label="pos")
        byte = data.draw(
            st.sampled_from(
                [
                    0x00,
                    0x0A,
                    0x20,
                    0x2F,
                    0x3A,
                    0x7F,
                    0x80,
                    0xC3,
                    0xFF,
                    0xFE,
                    ord("9"),
                    ord("-"),
                    ord(","),
                ]
            ),
            label="byte",
        )
        how = data.draw(st.sampled_from(["flip", "insert", "delete"]), label="how")
        if how == "insert" or pos >= len(raw):
            raw[pos:pos] = bytes([byte])
        elif how == "flip":
            raw[pos] = byte
        else:
            del raw[pos]
    check_all(raw.decode("utf-8", errors="replace"))  # what the runner hands the parsers


_NUMBER = re.compile(r"\d+")
HUGE = [
    "9" * 5000,
    "1" + "0" * 4300,
    "-1",
    "-9999999999999999999",
    "0",
    "٣",
    "²",
    "1e308",
    "18446744073709551616",
    "99999999999999999999999999999",
]


@FUZZ
@given(st.sampled_from([t for t in CORPUS if _NUMBER.search(t)]), st.data())
def test_huge_negative_and_strange_numbers(text, data):
    spans = [m.span() for m in _NUMBER.finditer(text)]
    chosen = data.draw(st.lists(st.sampled_from(spans), min_size=1, max_size=4, unique=True))
    out = text
    for start, end in sorted(chosen, reverse=True):
        out = out[:start] + data.draw(st.sampled_from(HUGE)) + out[end:]
    check_all(out)


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text(text):
    check_all(text)


@pytest.mark.parametrize("version", ["8.4", "9", "auto"])
def test_observe_never_raises_on_mutated_outputs(version):
    """The whole adapter over a runner that answers every command with a mutated capture."""
    import random

    rng = random.Random(16)
    cases = 0
    for text in CORPUS[:: max(1, len(CORPUS) // 60)]:
        lines = text.splitlines(keepends=True)
        for cut in range(0, len(lines) + 1, max(1, len(lines) // 6)):
            mutated = "".join(lines[:cut])
            if mutated and rng.random() < 0.5:
                pos = rng.randrange(len(mutated))
                mutated = (
                    mutated[:pos]
                    + rng.choice(["\ufffd", "9" * 5000, "\n", "-1"])
                    + mutated[pos + 1 :]
                )
            fake = FakeRunner()
            for prefix in (("cat",), ("drbdadm",), ("drbdsetup",), ("dmesg",)):
                fake.answer(
                    prefix, rc=rng.choice([0, 0, 0, 10, 11]), stdout=mutated, stderr=mutated[:200]
                )
            drbd = Drbd(fake, version=version)
            for _ in range(2):  # the second call uses what the first one cached
                observed = drbd.observe(["r0", "r1"])
                assert [r.name for r in observed] == ["r0", "r1"]
                for r in observed:
                    if r.error:
                        assert "`" in r.error or "cannot" in r.error, r.error
                cases += 1
    RUN[f"observe_{version}"] = cases
    print(f"\nfuzz drbd observe {version}: {cases} cases")


def test_zz_report():
    """Printed last: cases per parser (``pytest -s``)."""
    print(
        "\nfuzz drbd cases: "
        + ", ".join(f"{k} {v}" for k, v in sorted(RUN.items()))
        + f"; total {sum(RUN.values())}"
    )
    assert sum(RUN.values()) > 0
