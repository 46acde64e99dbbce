"""``iscsi-cfg node-time2wait`` (controller/initiator_tuning.py, controller/systems/iscsiadm.py):
the parsers on real ``iscsiadm`` captures, the command's show / set / revert over a fake runner
answering with those captures, and the real command against real open-iscsi node records."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from fakes import FakeRunner
from iscsi_ha.controller.initiator_tuning import FAILED, OK, STATE_FILE, run
from iscsi_ha.controller.systems.iscsiadm import (
    KEY,
    NO_RECORDS,
    NodeRecords,
    parse_node_list,
    parse_node_show,
    time2wait_of,
)

FIX = Path(__file__).parent / "fixtures" / "open-iscsi"
IQN = "iqn.2026-12.org.iscsi-ha.capture:switch"
PORTAL = "127.0.0.1:3260"


def text(name: str) -> str:
    return (FIX / name).read_text()


def test_parsers_read_the_real_captures():
    assert parse_node_list(text("node-list.txt")) == [(PORTAL, IQN)]
    fields = parse_node_show(text("node-show.txt"))
    assert fields["node.name"] == IQN and fields["node.conn[0].port"] == "3260"
    assert time2wait_of(fields) == 2  # open-iscsi's default
    assert parse_node_list(text("node-show-no-records.txt")) == []
    assert time2wait_of({KEY: "<empty>"}) is None


class Records:
    """A fake iscsiadm keeping one record's DefaultTime2Wait, answering with the captures."""

    def __init__(self, value: int = 2, listed: bool = True) -> None:
        self.value = value
        self.runner = FakeRunner()
        self.runner.answer_with(("iscsiadm", "-m", "node"), self.answer)
        self.listed = listed

    def answer(self, argv):
        from iscsi_ha.controller.systems.runner import CommandResult

        if argv == ("iscsiadm", "-m", "node"):
            if not self.listed:
                return CommandResult(argv, NO_RECORDS, "", text("node-show-no-records.txt"))
            return CommandResult(argv, 0, text("node-list.txt"))
        if "update" in argv:
            self.value = int(argv[-1])
            return CommandResult(argv, 0, text("node-update.txt"))
        shown = text("node-show.txt").replace(f"{KEY} = 2", f"{KEY} = {self.value}")
        return CommandResult(argv, 0, shown)

    def nodes(self) -> NodeRecords:
        return NodeRecords(self.runner)


def test_show_set_revert(tmp_path):
    fake = Records()
    code, out = run(str(tmp_path), IQN, 0, None, False, fake.nodes())
    assert code == OK and f"{PORTAL}: DefaultTime2Wait 2 -> negotiated 2 s" in out
    assert not fake.runner.ran("iscsiadm", "-m", "node", "-T", IQN, "-p", PORTAL, "-o", "update")

    code, out = run(str(tmp_path), IQN, 0, 0, False, fake.nodes())
    assert code == OK and fake.value == 0, out
    assert "DefaultTime2Wait 2 -> 0" in out
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    assert saved["records"][f"{PORTAL} {IQN}"]["previous"] == 2
    code, out = run(str(tmp_path), IQN, 0, None, False, fake.nodes())
    assert "DefaultTime2Wait 0 -> negotiated 0 s; set by iscsi-cfg, was 2" in out

    # A second --set keeps the first previous value: --revert goes back to open-iscsi's.
    run(str(tmp_path), IQN, 0, 1, False, fake.nodes())
    assert (
        json.loads((tmp_path / STATE_FILE).read_text())["records"][f"{PORTAL} {IQN}"]["previous"]
        == 2
    )
    code, out = run(str(tmp_path), IQN, 0, None, True, fake.nodes())
    assert code == OK and fake.value == 2, out
    assert not (tmp_path / STATE_FILE).exists()
    code, out = run(str(tmp_path), IQN, 0, None, True, fake.nodes())
    assert code == OK and out.startswith("nothing to revert")


def test_the_target_offer_wins_when_larger(tmp_path):
    fake = Records(value=0)
    code, out = run(str(tmp_path), IQN, 2, None, False, fake.nodes())
    assert "DefaultTime2Wait 0 -> negotiated 2 s" in out
    assert "target offers DefaultTime2Wait 2" in out


def test_no_record_changes_nothing_and_says_why(tmp_path):
    fake = Records(listed=False)
    code, out = run(str(tmp_path), IQN, 0, 0, False, fake.nodes())
    assert code == FAILED and "no open-iscsi node record for" in out
    assert "nothing was changed" in out and not (tmp_path / STATE_FILE).exists()


def test_a_damaged_state_file_stops_everything(tmp_path):
    (tmp_path / STATE_FILE).write_text("{not json")
    fake = Records()
    code, out = run(str(tmp_path), IQN, 0, 0, False, fake.nodes())
    assert code == FAILED and "is damaged" in out and fake.value == 2


@pytest.mark.tools
@pytest.mark.skipif(os.geteuid() != 0, reason="node records live in /etc/iscsi (root)")
@pytest.mark.skipif(not shutil.which("iscsiadm"), reason="needs open-iscsi (scripts/setup-env.sh)")
def test_the_real_command_against_real_node_records(tmp_path):
    iqn = f"iqn.2026-12.org.iscsi-ha.test:{uuid.uuid4().hex[:12]}"
    config = tmp_path / "iscsi-ha.yaml"
    config.write_text(f"""resources: [iscsi1]
vip: {{address: 10.99.0.3/24, interface: eth0}}
target: {{iqn: "{iqn}", default_time2wait: 0}}
paths: {{state_dir: "{tmp_path / "state"}"}}
""")
    cli = [
        str(Path(sys.executable).parent / "iscsi-cfg"),
        "--config",
        str(config),
        "node-time2wait",
    ]

    def record_value() -> str:
        out = subprocess.run(
            ["iscsiadm", "-m", "node", "-T", iqn, "-p", PORTAL, "-o", "show"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        return parse_node_show(out)[KEY]

    subprocess.run(
        ["iscsiadm", "-m", "node", "-o", "new", "-T", iqn, "-p", PORTAL],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        assert record_value() == "2"
        shown = subprocess.run(cli, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "DefaultTime2Wait 2 -> negotiated 2 s" in shown.stdout
        setting = subprocess.run(cli + ["--set", "0"], capture_output=True, text=True, timeout=60)
        assert setting.returncode == 0, setting.stderr
        assert record_value() == "0"
        back = subprocess.run(cli + ["--revert"], capture_output=True, text=True, timeout=60)
        assert back.returncode == 0, back.stderr
        assert record_value() == "2"
    finally:
        subprocess.run(
            ["iscsiadm", "-m", "node", "-o", "delete", "-T", iqn, "-p", PORTAL],
            capture_output=True,
            timeout=30,
        )
