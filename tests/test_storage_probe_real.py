"""The storage probe against a real tgtd (tgt 1.0.85) in network namespaces: a ``node1`` that
serves the target and a ``client`` the probe runs in, on one bridge (``tests/netns.py``).

What it shows: a login and a read of the real block 0 (its CRC equals the backing file's); each
way the storage can be gone reads as a failure with the step that failed, within the probe's
deadline (target deleted: login refused; LUN removed; tgtd gone: connect refused; address nobody
holds: timeout); the exporter renders it; a scrape during a probe that hangs is not delayed. It
also re-captures the session the hostile-input tests replay and checks that the fixture still
has the same shape (``tests/fixtures/iscsi/``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Iterator

import pytest
from iscsi_ha.controller.probe import ProbeJob, ProbeSettings
from iscsi_ha.controller.systems import iscsi_pdu as pdu
from iscsi_ha.controller.systems import iscsi_probe
from iscsi_ha.exporter.probe_collector import ProbeCollector
from netns import NetnsLab, unavailable
from prometheus_client import CollectorRegistry, generate_latest

from lab.prometheus import in_netns

SKIP = unavailable("tgtd", "tgtadm")
pytestmark = [pytest.mark.integration, pytest.mark.skipif(bool(SKIP), reason=SKIP or "")]

HOSTS = {"node1": "10.97.0.1/24", "client": "10.97.0.10/24"}
NODE1, NOBODY = "10.97.0.1", "10.97.0.77"
IQN = "iqn.2024-01.org.iscsi-ha:probe-test"
FIX = Path(__file__).parent / "fixtures" / "iscsi"
BLOCK0 = b"iscsi-ha probe fixture block 0\n" * 16  # 496 bytes, then zeros


class Tgt:
    def __init__(self, lab: NetnsLab, disk: Path) -> None:
        self.lab, self.disk = lab, disk
        self.port = str(20000 + os.getpid() % 10000)
        self.proc = subprocess.Popen(
            lab.argv("node1", ["tgtd", "-f", "-C", self.port]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while self.adm("--mode", "target", "--op", "show").returncode != 0:
            assert time.monotonic() < deadline, "tgtd did not start"
            time.sleep(0.05)

    def adm(self, *args: str) -> subprocess.CompletedProcess:
        return self.lab.run(
            "node1", ["tgtadm", "-C", self.port, "--lld", "iscsi", *args], check=False
        )

    def serve(self) -> None:
        for args in (
            ("--mode", "target", "--op", "new", "--tid", "1", "--targetname", IQN),
            (
                "--mode",
                "logicalunit",
                "--op",
                "new",
                "--tid",
                "1",
                "--lun",
                "1",
                "--backing-store",
                str(self.disk),
            ),
            ("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL"),
        ):
            res = self.adm(*args)
            assert res.returncode == 0, res.stderr

    def unserve(self) -> None:
        self.adm("--mode", "target", "--op", "delete", "--force", "--tid", "1")

    def stop(self) -> None:
        self.unserve()
        self.adm("--mode", "system", "--op", "delete")
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # by PID: the one we started
            self.proc.wait(3)
        for suffix in ("", ".lock"):
            Path(f"/var/run/tgtd/socket.{self.port}{suffix}").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def lab() -> Iterator[NetnsLab]:
    with NetnsLab(HOSTS) as lab:
        yield lab


@pytest.fixture(scope="module")
def tgt(lab, tmp_path_factory) -> Iterator[Tgt]:
    disk = tmp_path_factory.mktemp("probe") / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
        f.write(BLOCK0)
    t = Tgt(lab, disk)
    try:
        yield t
    finally:
        t.stop()


@pytest.fixture
def serving(tgt) -> Iterator[Tgt]:
    tgt.serve()
    try:
        yield tgt
    finally:
        tgt.unserve()


def probe(lab: NetnsLab, host: str = NODE1, luns=(1,), timeout: float = 1.0):
    t0 = time.monotonic()
    result = in_netns(
        lab.ns["client"], lambda: iscsi_probe.run_probe(host, IQN, list(luns), timeout=timeout)
    )
    assert time.monotonic() - t0 < timeout + 0.5
    return result


def test_reads_the_real_block_0(lab, serving):
    result = probe(lab)
    assert result.ok, result.sentence()
    (lun,) = result.luns
    assert lun.block_size == 512 and lun.vendor == "IET"
    assert lun.block0_crc32 == zlib.crc32(BLOCK0 + bytes(512 - len(BLOCK0)))
    assert result.seconds < 0.5  # ~3 ms measured; generous for a loaded CI machine


def test_lun_not_served_fails_that_lun_only(lab, serving):
    result = probe(lab, luns=(1, 2))
    assert [lun.ok for lun in result.luns] == [True, False]
    assert "not a disk" in result.luns[1].error and not result.error


def test_target_deleted_fails_the_login(lab, tgt):
    # tgtd with no target at all drops the connection during the login.
    result = probe(lab)
    assert not result.ok and result.error.startswith("login"), result.error


def test_other_target_refuses_the_login(lab, serving):
    result = in_netns(
        lab.ns["client"], lambda: iscsi_probe.run_probe(NODE1, IQN + "-other", [1], timeout=1.0)
    )
    assert "no such target" in result.error, result.error


def test_lun_removed_under_a_served_target(lab, serving):
    res = serving.adm("--mode", "logicalunit", "--op", "delete", "--tid", "1", "--lun", "1")
    assert res.returncode == 0, res.stderr
    result = probe(lab)
    assert not result.ok and "INQUIRY" in result.luns[0].error


def test_nothing_listening_and_nobody_at_the_address(lab, tgt):
    # No tgtd in client's namespace: refused at once.
    refused = probe(lab, host="10.97.0.10")
    assert refused.error.startswith("connect:") and refused.seconds < 0.5
    # An address nobody holds: ARP gets no answer, the deadline ends it.
    silent = probe(lab, host=NOBODY, timeout=0.5)
    assert silent.error == "connect: timed out" or silent.error.startswith("connect:")
    assert 0.4 < silent.seconds < 1.0


def test_scrape_is_not_delayed_by_a_hanging_probe(lab, serving):
    """The exporter renders the last finished run while the next one waits for a dead address."""
    job = ProbeJob(ProbeSettings(host=NODE1, target=IQN, luns=(1,), timeout=1.0), "client")
    registry = CollectorRegistry(auto_describe=True)
    ProbeCollector(job.history, registry)
    assert generate_latest(registry) == b""  # before the first run: nothing invented
    in_netns(lab.ns["client"], job.run)
    job.settings = ProbeSettings(host=NOBODY, target=IQN, luns=(1,), timeout=2.0)
    hung = threading.Thread(target=in_netns, args=(lab.ns["client"], job.run), daemon=True)
    hung.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    text = generate_latest(registry).decode()
    assert time.monotonic() - t0 < 0.1
    assert 'iscsi_ha_storage_probe_success{lun="1",observer="client"} 1.0' in text
    assert (
        registry.get_sample_value(
            "iscsi_ha_storage_probes_total", {"observer": "client", "lun": "1"}
        )
        == 1
    )
    hung.join(5)
    assert (
        registry.get_sample_value(
            "iscsi_ha_storage_probe_success", {"observer": "client", "lun": "1"}
        )
        == 0
    )
    assert (
        registry.get_sample_value(
            "iscsi_ha_storage_probe_failures_total", {"observer": "client", "lun": "1"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "iscsi_ha_storage_probe_duration_seconds_count", {"observer": "client"}
        )
        == 2
    )


def test_the_replayed_fixture_still_looks_like_tgtd(lab, serving, monkeypatch):
    """Re-capture what tgtd sends to a probe; the fixture must have the same PDU sequence."""
    seen = bytearray()
    real = socket.create_connection

    class Recording:
        def __init__(self, sock: socket.socket) -> None:
            self._sock = sock

        def __getattr__(self, name):
            return getattr(self._sock, name)

        def recv(self, n: int) -> bytes:
            data = self._sock.recv(n)
            seen.extend(data)
            return data

    monkeypatch.setattr(
        iscsi_probe.socket, "create_connection", lambda *a, **k: Recording(real(*a, **k))
    )
    assert probe(lab).ok

    def shape(stream: bytes):
        out, i = [], 0
        while i < len(stream):
            h = pdu.parse_header(stream[i : i + 48])
            out.append((h.opcode, h.flags, h.data_length if h.opcode != 0x25 else None))
            i += 48 + h.ahs_length + h.padded_data_length
        return out

    assert shape(bytes(seen)) == shape((FIX / "tgtd-probe-lun1.target.bin").read_bytes())
