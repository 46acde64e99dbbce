"""Converting the original tool's shell-style iscsi-ha.conf: mapping, notes, shell syntax, errors.

``examples/iscsi-ha.conf`` carries every key the original documents (its shipped iscsi-ha.conf:
DRBD_*, ISCSI_TARGET_SERVICE, ENABLE_LOGGING, MAIL_* / SMTP_*, MONITOR_*, MANUAL_MODE and the
replication addresses); a real bash is used to check that our scanner reads the same values.
"""

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from iscsi_ha.controller.config import ConfigError, load_config
from iscsi_ha.controller.legacy import (
    convert_legacy,
    load_legacy,
    mask_to_prefix,
    render_yaml,
    scan_assignments,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "iscsi-ha.conf"
SMTP_SECRET = "example-smtp-Secret-4711"
BASE = "DRBD_RESOURCES=iscsi1\nDRBD_VIRTUAL_IP=10.10.10.3\nDRBD_VIRTUAL_MASK=255.255.255.0\n"


def convert(text):
    return convert_legacy(text, "test.conf")


def problems_of(text):
    with pytest.raises(ConfigError) as info:
        convert(text)
    assert all(line.startswith("test.conf: ") for line in str(info.value).splitlines())
    return list(info.value.problems)


def note_about(notes, key):
    found = [n for n in notes if key in n]
    assert found, (key, notes)
    return found[0]


# --------------------------------------------------------------------------------------------
# The example with every documented key
# --------------------------------------------------------------------------------------------


def test_example_converts_every_documented_key():
    data, notes = load_legacy(EXAMPLE)
    assert data == {
        "interval": 10,
        "cycle_deadline": 35,
        "resources": ["iscsi1", "iscsi2"],
        "vip": {"address": "10.10.10.3/24", "interface": "xenbr1"},
        "logging": {"level": "info"},
    }
    assert notes[0] == f"Converted from {EXAMPLE} by `iscsi-cfg import-conf`."
    copied = note_about(notes, "Copied:")
    for key in (
        "DRBD_RESOURCES",
        "DRBD_VIRTUAL_IP",
        "DRBD_VIRTUAL_MASK",
        "DRBD_INTERFACE",
        "MONITOR_DELAY",
        "ENABLE_LOGGING",
    ):
        assert key in copied
    tgt = note_about(notes, "ISCSI_TARGET_SERVICE")
    assert "runs tgtd itself" in tgt and "systemctl disable --now tgtd" in tgt
    deadline = note_about(notes, "MONITOR_MAX_STARTS -> cycle_deadline")
    assert "35 s = MONITOR_DELAY 10 + MONITOR_MAX_STARTS 5 x MONITOR_SCANRATE 5" in deadline
    assert "Assumed" not in deadline
    killall = note_about(notes, "MONITOR_KILLALL")
    assert "timeout" in killall
    mail = note_about(notes, "MAIL_ON")
    for key in (
        "MAIL_USE_SHARED_PARAMS",
        "MAIL_SUBJECT",
        "MAIL_FROM",
        "MAIL_TO",
        "MAIL_SCREEN_TIME",
        "SMTP_SERVER",
        "SMTP_PORT",
        "SMTP_USER",
        "SMTP_PASS",
    ):
        assert key in mail
    assert "alerts/alertmanager.yml" in mail and "dropped" in mail
    assert "MANUAL_MODE dropped" in note_about(notes, "MANUAL_MODE")
    assert "DRBD resource files" in note_about(notes, "SERVER_ONE_IP and SERVER_TWO_IP")
    assert "repeats DRBD_VIRTUAL_IP" in note_about(notes, "REPLICATION_IP_ISCSI")
    assert not any(n.startswith("Left out") for n in notes)


def test_no_dropped_value_is_repeated():
    data, notes = load_legacy(EXAMPLE)
    out = render_yaml(data, notes)
    for value in (SMTP_SECRET, "mail.example.org", "storage-team@example.org", "smtp-relay-user"):
        assert value not in out


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_scanner_reads_what_bash_reads():
    text = EXAMPLE.read_text() + (
        'QUOTED=\'a "b" c\'\nESCAPED=a\\ b\\"c\nMIXED=x"y z"\'w\'\nEMPTY=\nJOINED=a\\\nb\n'
        "A=1; B=2 # two on a line\nexport C=3 D='4 4'\nMULTI=\"line1\nline2\"\n"
    )
    assignments, problems = scan_assignments(text)
    assert problems == []
    names = list(dict.fromkeys(a.name for a in assignments))
    # bash prints each variable NUL-terminated, after sourcing the same text with no environment.
    script = 'source /dev/stdin; for n in "$@"; do printf "%s\\0" "${!n}"; done'
    done = subprocess.run(
        ["bash", "-c", script, "bash", *names],
        input=text.encode(),
        capture_output=True,
        timeout=10,
        env={"HOSTNAME": "h"},
        check=True,
    )
    from_bash = dict(zip(names, done.stdout.decode().split("\0")))
    ours = {a.name: a.value for a in assignments}
    expanded = {a.name for a in assignments if a.expanded}
    assert expanded == {"MAIL_SUBJECT"}
    for name in names:
        if name not in expanded:
            assert ours[name] == from_bash[name], name
    assert ours["MULTI"] == "line1\nline2" and ours["JOINED"] == "ab"


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


def test_round_trip_legacy_to_yaml_to_load_config(tmp_path):
    data, notes = load_legacy(EXAMPLE)
    text = render_yaml(data, notes)
    assert text.startswith("# iscsi-ha configuration converted from the legacy iscsi-ha.conf.")
    assert "# - " + notes[0] in text
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert body[0] == "interval: 10"
    path = tmp_path / "iscsi-ha.yaml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.resources == ("iscsi1", "iscsi2")
    assert cfg.vip.address == "10.10.10.3/24" and cfg.vip.interface == "xenbr1"
    assert (cfg.interval, cfg.cycle_deadline) == (10.0, 35.0)
    assert cfg.logging.level == "info" and cfg.logging.syslog is True
    assert [lun.path for lun in cfg.target.luns] == [
        "/dev/drbd/by-res/iscsi1/0",
        "/dev/drbd/by-res/iscsi2/0",
    ]
    assert yaml.safe_load(text) == data


def test_a_note_cannot_break_out_of_its_comment(tmp_path):
    data, _ = convert(BASE)
    text = render_yaml(data, ["first line\nvip: {address: 1.2.3.4/8}", "x" * 300])
    assert yaml.safe_load(text) == data
    assert all(len(line) <= 100 for line in text.splitlines())


def test_minimal_file_and_defaults_noted(tmp_path):
    data, notes = convert(BASE)
    assert data == {"resources": ["iscsi1"], "vip": {"address": "10.10.10.3/24"}}
    assert "vip.interface keeps its default, xenbr0" in note_about(notes, "DRBD_INTERFACE")
    path = tmp_path / "c.yaml"
    path.write_text(render_yaml(data, notes))
    assert load_config(path).vip.interface == "xenbr0"


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask,prefix",
    [
        ("255.255.255.0", 24),
        ("255.255.255.255", 32),
        ("255.255.254.0", 23),
        ("255.0.0.0", 8),
        ("255.255.255.252", 30),
        ("128.0.0.0", 1),
        ("0.0.0.0", 0),
        ("24", 24),
        ("/16", 16),
    ],
)
def test_masks(mask, prefix):
    assert mask_to_prefix(mask) == prefix


@pytest.mark.parametrize(
    "mask,fragment",
    [
        ("255.0.255.0", "not a contiguous netmask"),
        ("255.255.255.1", "not a contiguous netmask"),
        ("0.255.255.255", "not a contiguous netmask"),
        ("255.255.255.256", "not a netmask"),
        ("255.255.255", "not a netmask"),
        ("abc", "not a netmask"),
        ("33", "not a prefix length"),
        ("0.0.0.0", "covers every address"),
    ],
)
def test_bad_masks_name_the_line(mask, fragment):
    text = f"# header\n\n{BASE.replace('255.255.255.0', mask)}"
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("line 5: DRBD_VIRTUAL_MASK: "), problems
    assert repr(mask) in problems[0]
    assert fragment in problems[0]


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_mask_is_accepted_iff_contiguous(value):
    dotted = str(ipaddress.IPv4Address(value))
    try:
        network = ipaddress.IPv4Network(f"0.0.0.0/{dotted}")
    except ValueError:
        contiguous = None
    else:
        contiguous = network.prefixlen
    # ipaddress also takes host masks (0.0.0.255); a netmask is the ones-then-zeros kind only.
    if contiguous is not None and int(network.netmask) != value:
        contiguous = None
    try:
        got = mask_to_prefix(dotted)
    except ValueError:
        assert contiguous is None
    else:
        assert got == contiguous


# --------------------------------------------------------------------------------------------
# Shell syntax and errors
# --------------------------------------------------------------------------------------------


def test_shell_syntax_tolerated():
    text = """
#!/bin/bash
   # indented comment
export DRBD_RESOURCES='iscsi1:iscsi2'   # comment after a value
DRBD_VIRTUAL_IP="10.10.10.3" ; DRBD_VIRTUAL_MASK=255.255.0.0
DRBD_INTERFACE=xen"br"'0'
export ENABLE_LOGGING
ENABLE_LOGGING=0
MONITOR_DELAY=2.5
"""
    data, notes = convert(text)
    assert data["resources"] == ["iscsi1", "iscsi2"]
    assert data["vip"] == {"address": "10.10.10.3/16", "interface": "xenbr0"}
    assert data["interval"] == 2.5 and "cycle_deadline" not in data
    assert data["logging"] == {"level": "warning", "syslog": False}
    assert "warnings and errors still go" in note_about(notes, "ENABLE_LOGGING=0")


def test_repeated_key_last_wins_with_a_note():
    data, notes = convert(BASE + "DRBD_RESOURCES=r0:r1\n")
    assert data["resources"] == ["r0", "r1"]
    assert "line 4: DRBD_RESOURCES is set again (first on line 1)" in note_about(notes, "again")


def test_unknown_keys_left_out_with_a_note():
    data, notes = convert(BASE + "FOO=bar-value\nXE_TIMEOUT=13\n")
    note = note_about(notes, "Left out")
    assert "FOO (line 4)" in note and "XE_TIMEOUT (line 5)" in note
    assert "bar-value" not in note and "FOO" not in str(data)


def test_monitor_deadline_assumes_the_original_defaults():
    data, notes = convert(BASE + "MONITOR_MAX_STARTS=3\n")
    assert data["cycle_deadline"] == 10 + 3 * 5
    assert "interval" not in data
    assert "Assumed the original's shipped MONITOR_DELAY=10, MONITOR_SCANRATE=5" in note_about(
        notes, "cycle_deadline"
    )
    data, notes = convert(BASE + "MONITOR_DELAY=4\nMONITOR_SCANRATE=2\n")
    assert "cycle_deadline" not in data
    assert "MONITOR_SCANRATE dropped" in note_about(notes, "MONITOR_SCANRATE")


def test_other_notes():
    _, notes = convert(
        BASE + "MANUAL_MODE=become_primary\nISCSI_TARGET_SERVICE=/etc/init.d/x\n"
        "REPLICATION_IP_ISCSI=10.10.10.9\n"
    )
    assert "iscsi-cfg manual-mode-enable" in note_about(notes, "MANUAL_MODE")
    assert "Only tgt is supported" in note_about(notes, "ISCSI_TARGET_SERVICE")
    assert "differs from DRBD_VIRTUAL_IP" in note_about(notes, "REPLICATION_IP_ISCSI")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("DRBD_RESOURCES = iscsi1\n", "line 1: DRBD_RESOURCES: no spaces allowed around '='"),
        ("DRBD_RESOURCES= iscsi1\n", "line 1: DRBD_RESOURCES: unexpected text after the value"),
        ("echo hello\n", "line 1: not a KEY=value assignment"),
        ("X='open\n\n", "line 1: unterminated single quote"),
        ('\nX="open\n', "line 2: unterminated double quote"),
        ("X=(a b)\n", "line 1: unsupported shell syntax '('"),
        ("X=a | tee\n", "line 1: unsupported shell syntax '|'"),
    ],
)
def test_shell_syntax_refused_with_the_line(text, expected):
    assignments, problems = scan_assignments(text)
    assert problems and problems[0].startswith(expected), problems


def test_all_problems_collected_and_values_of_secrets_not_quoted():
    text = """\
SMTP_PASS = hunter2-secret
DRBD_RESOURCES=iscsi1:bad/name:iscsi1
DRBD_VIRTUAL_IP=10.10.10.256
DRBD_VIRTUAL_MASK=255.0.255.0
DRBD_INTERFACE=$IFACE
MONITOR_DELAY=ten
ENABLE_LOGGING=yes
"""
    problems = problems_of(text)
    starts = [p.split(":", 2)[0] + ":" + p.split(":", 2)[1] for p in problems]
    assert starts == [
        "line 1: SMTP_PASS",
        "line 2: DRBD_RESOURCES",
        "line 2: DRBD_RESOURCES",
        "line 3: DRBD_VIRTUAL_IP",
        "line 4: DRBD_VIRTUAL_MASK",
        "line 5: DRBD_INTERFACE",
        "line 6: MONITOR_DELAY",
        "line 7: ENABLE_LOGGING",
    ], problems
    assert "'bad/name' is not a DRBD resource name" in problems[1]
    assert "iscsi1 listed more than once" in problems[2]
    assert "shell expansion" in problems[5]
    assert "hunter2" not in "\n".join(problems)


def test_missing_required_settings():
    problems = problems_of("DRBD_INTERFACE=xenbr0\n")
    assert [p.split(":")[0] for p in problems] == [
        "DRBD_RESOURCES",
        "DRBD_VIRTUAL_IP",
        "DRBD_VIRTUAL_MASK",
    ]


def test_network_address_as_vip_is_caught_after_conversion():
    problems = problems_of(
        "DRBD_RESOURCES=a\nDRBD_VIRTUAL_IP=10.10.10.0\n"
        "DRBD_VIRTUAL_MASK=255.255.255.0\nDRBD_INTERFACE=eth0\n"
    )
    assert problems == [
        "after conversion: vip.address: '10.10.10.0/24' is the network address "
        "of 10.10.10.0/24, not a host address"
    ]


def test_load_legacy_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_legacy(tmp_path / "absent.conf")
