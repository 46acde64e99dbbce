"""Hostile and damaged input to the target parsers: zero uncaught exceptions (issue 16, the tgt
and LIO part). Every case starts from a real capture (tests/fixtures/tgt, tests/fixtures/lio)
and is then truncated at every line, has bytes flipped, or gets non-UTF-8 bytes, the way a
client's alias, a half-written file or a newer tool would damage it. The parsers may refuse
(TgtParseError, with the line quoted) but never raise anything else, and observe() never raises.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import FakeRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iscsi_ha.controller.systems import lio
from iscsi_ha.controller.systems.tgt import (
    Target,
    TgtParseError,
    parse_show,
    parse_targets_conf,
)

FIX = Path(__file__).parent / "fixtures"
TGT_SHOWS = sorted(p for p in (FIX / "tgt").glob("*.txt") if p.name != "errors.txt")
LIO_TREES = sorted(p for p in (FIX / "lio").glob("*.json") if p.name != "steps.json")
TGT_CONF = FIX / "tgt" / "targets.conf"
IQN = "iqn.2024-01.org.iscsi-ha:vmlab"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _tgt_safe(raw: bytes) -> None:
    text = raw.decode(errors="replace")  # what the runner hands over
    try:
        parse_show(text)
    except TgtParseError as exc:
        assert str(exc)  # a refusal names what it refused
    fake = FakeRunner()
    fake.answer(
        ("tgtadm", "-C", "7", "--lld", "iscsi", "--mode", "target", "--op", "show"), stdout=text
    )
    obs = Target(fake, control_port=7).observe()
    assert obs.error is None or "cannot read" in obs.error


def _conf_safe(raw: bytes) -> None:
    try:
        parse_targets_conf(raw.decode(errors="replace"))
    except TgtParseError as exc:
        assert "line" in str(exc)


@pytest.mark.parametrize("path", TGT_SHOWS + [TGT_CONF], ids=lambda p: p.name)
def test_truncation_at_every_line(path):
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    check = _conf_safe if path == TGT_CONF else _tgt_safe
    for i in range(len(lines) + 1):
        check(b"\n".join(lines[:i]))
        check(b"\n".join(lines[:i])[:-3])  # and mid-line


@SETTINGS
@given(data=st.data())
def test_byte_flips_and_non_utf8_in_tgt_show(data):
    raw = bytearray(data.draw(st.sampled_from(TGT_SHOWS)).read_bytes())
    for _ in range(data.draw(st.integers(1, 12))):
        if not raw:
            break
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(
            st.sampled_from(
                [0x0A, 0x20, 0x3A, 0xFF, 0xC3, 0x00, 0x54, data.draw(st.integers(0, 255))]
            )
        )
    insert = data.draw(st.binary(max_size=40))
    at = data.draw(st.integers(0, len(raw)))
    _tgt_safe(bytes(raw[:at]) + insert + bytes(raw[at:]))


@SETTINGS
@given(data=st.data())
def test_byte_flips_in_targets_conf(data):
    raw = bytearray(TGT_CONF.read_bytes())
    for _ in range(data.draw(st.integers(1, 12))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    _conf_safe(bytes(raw))


def _lio_safe(tree: lio.Tree) -> None:
    state = lio.parse_tree(tree, IQN)
    want = lio.Desired(IQN, lio.lun_specs(IQN, [(1, "/dev/vda")]))
    lio.missing(state, want)
    lio.plan_serve(state, want)
    lio.plan_remove(state, IQN)


@pytest.mark.parametrize("path", LIO_TREES, ids=lambda p: p.name)
def test_lio_tree_with_every_file_truncated_or_missing(path):
    base = lio.Tree.from_json(path.read_text())
    for key in list(base.files):
        for damaged in (
            "",
            base.files[key][:1],
            base.files[key][:-2],
            "\ufffd\x00\n",
            "99999999999999999999999\n",
            "-1\n",
        ):
            t = lio.Tree.from_json(path.read_text())
            t.files[key] = damaged
            _lio_safe(t)
        t = lio.Tree.from_json(path.read_text())
        del t.files[key]
        _lio_safe(t)


@SETTINGS
@given(data=st.data())
def test_lio_tree_mutations(data):
    t = lio.Tree.from_json(data.draw(st.sampled_from(LIO_TREES)).read_text())
    text = st.text(max_size=60) | st.binary(max_size=60).map(lambda b: b.decode(errors="replace"))
    for _ in range(data.draw(st.integers(1, 10))):
        kind = data.draw(st.sampled_from(["file", "dir", "link", "drop-dir"]))
        if kind == "file" and t.files:
            t.files[data.draw(st.sampled_from(sorted(t.files)))] = data.draw(text)
        elif kind == "dir":
            parent = data.draw(st.sampled_from(sorted(t.dirs) or ["target"]))
            t.dirs.append(parent + "/" + data.draw(st.text(min_size=1, max_size=20)))
        elif kind == "link":
            parent = data.draw(st.sampled_from(sorted(t.dirs) or ["target"]))
            t.links[parent + "/x"] = data.draw(text)
        elif kind == "drop-dir" and t.dirs:
            t.dirs.remove(data.draw(st.sampled_from(sorted(t.dirs))))
    _lio_safe(t)
    json.loads(t.to_json())
