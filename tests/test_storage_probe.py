"""The storage probe's iSCSI initiator against a hostile target (no root, loopback only).

The target side is played by a thread on 127.0.0.1 that answers each PDU the probe sends with the
next PDU of a real tgtd session (``tests/fixtures/iscsi/tgtd-probe-lun1.target.bin``, captured by
``test_storage_probe_real.py`` from tgt 1.0.85), replayed as captured or damaged: truncated,
bytes flipped, lengths inflated, silent, trickling, closing, flooding NOP-Ins. The probe must always
return a ``ProbeResult`` (never raise, never hang): within its deadline, with an error that says
which step failed. The pure PDU parsers get the same treatment with Hypothesis.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iscsi_ha.controller.report import DURATION_BUCKETS, LatestProbe, ProbeResult
from iscsi_ha.controller.systems import iscsi_pdu as pdu
from iscsi_ha.controller.systems.iscsi_probe import run_probe

FIX = Path(__file__).parent / "fixtures" / "iscsi"
CAPTURE = (FIX / "tgtd-probe-lun1.target.bin").read_bytes()
SENT = (FIX / "tgtd-probe-lun1.initiator.bin").read_bytes()
NO_TARGET = (FIX / "tgtd-login-no-such-target.target.bin").read_bytes()
IQN = "iqn.2024-01.org.iscsi-ha:probe-test"
TIMEOUT = 0.5
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def split_pdus(stream: bytes) -> List[bytes]:
    out, i = [], 0
    while i < len(stream):
        h = pdu.parse_header(stream[i : i + 48])
        end = i + 48 + h.ahs_length + h.padded_data_length
        out.append(stream[i:end])
        i = end
    return out


def answers(pdus: List[bytes]) -> List[bytes]:
    """The target's PDUs grouped per request: a Data-In without status is followed by the PDU
    that ends the task (tgtd sends READ CAPACITY's data, then the UNIT ATTENTION response)."""
    out, current = [], b""
    for p in pdus:
        current += p
        h = pdu.parse_header(p[:48])
        if h.opcode != pdu.OP_DATA_IN or h.flags & 0x01:
            out.append(current)
            current = b""
    return out


TARGET_PDUS = split_pdus(CAPTURE)
ANSWERS = answers(TARGET_PDUS)
INITIATOR_PDUS = []  # what the probe sent in the capture (not a target's opcodes: split by hand)
_i = 0
while _i < len(SENT):
    _n = 48 + pdu.pad4(int.from_bytes(SENT[_i + 5 : _i + 8], "big"))
    INITIATOR_PDUS.append(SENT[_i : _i + _n])
    _i += _n


class FakeTarget:
    """A loopback TCP server: for the n-th PDU it reads it sends ``answer(n, pdu)`` (bytes, or
    None to say nothing more), byte by byte with ``trickle`` seconds between them if set."""

    def __init__(
        self, answer: Callable[[int, bytes], Optional[bytes]], trickle: float = 0.0
    ) -> None:
        self.answer, self.trickle = answer, trickle
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.received: List[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read(self, conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _serve(self) -> None:
        self.sock.settimeout(5)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        conn.settimeout(5)
        try:
            n = 0
            while not self.stop.is_set():
                bhs = self._read(conn, 48)
                data = self._read(conn, pdu.pad4(int.from_bytes(bhs[5:8], "big")))
                self.received.append(bhs + data)
                reply = self.answer(n, bhs + data)
                n += 1
                if reply is None:
                    self.stop.wait(5)  # silent: holds the connection open
                    return
                if self.trickle:
                    for b in reply:
                        if self.stop.is_set():
                            return
                        conn.sendall(bytes([b]))
                        time.sleep(self.trickle)
                else:
                    conn.sendall(reply)
        except (EOFError, OSError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(6)


@pytest.fixture
def target() -> Iterator[Callable[..., FakeTarget]]:
    made: List[FakeTarget] = []

    def make(answer: Callable[[int, bytes], Optional[bytes]], **kw) -> FakeTarget:
        t = FakeTarget(answer, **kw)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def replay(pdus: List[bytes], itt_from_request: bool = True) -> Callable[[int, bytes], bytes]:
    """Answer the n-th request with the n-th captured reply, its ITT set to the request's (our
    ITTs are per run; the capture's belong to the capture's run)."""

    def answer(n: int, request: bytes) -> Optional[bytes]:
        if n >= len(pdus):
            return None
        reply = bytearray(pdus[n])
        if itt_from_request:
            # Every PDU of the answer (a Data-In and its response) carries the request's ITT.
            i = 0
            while i + 20 <= len(reply):
                reply[i + 16 : i + 20] = request[16:20]
                n_data = int.from_bytes(reply[i + 5 : i + 8], "big")
                i += 48 + reply[i + 4] * 4 + pdu.pad4(n_data)
        return bytes(reply)

    return answer


def probe(t: FakeTarget, luns=(1,), timeout: float = TIMEOUT) -> ProbeResult:
    t0 = time.monotonic()
    result = run_probe("127.0.0.1", IQN, list(luns), port=t.port, timeout=timeout)
    took = time.monotonic() - t0
    assert took < timeout + 0.3, f"the probe took {took:.2f}s with a {timeout}s deadline"
    assert isinstance(result, ProbeResult)
    assert result.seconds <= took + 0.01
    return result


# --------------------------------------------------------------------------------------------
# The real session replayed
# --------------------------------------------------------------------------------------------


def test_capture_is_a_whole_probe_session():
    ops = [pdu.parse_header(p[:48]).opcode for p in TARGET_PDUS]
    assert ops[:2] == [pdu.OP_LOGIN_RESPONSE, pdu.OP_LOGIN_RESPONSE]
    assert ops[-1] == pdu.OP_LOGOUT_RESPONSE
    assert pdu.OP_DATA_IN in ops
    assert len(INITIATOR_PDUS) == len(ANSWERS)  # one answer per request


def test_replayed_tgtd_session_reads_the_lun(target):
    t = target(replay(ANSWERS))
    result = probe(t)
    assert result.ok, result.sentence()
    (lun,) = result.luns
    assert (lun.vendor, lun.product, lun.block_size) == ("IET", "VIRTUAL-DISK", 512)
    # What we sent equals the capture's requests, but for the ISID and the ITT/CmdSN counters.
    assert [r[0] for r in t.received] == [r[0] for r in INITIATOR_PDUS]
    assert b"TargetName=" + IQN.encode() in t.received[0]


def test_login_refused_names_the_reason(target):
    t = target(replay([NO_TARGET]))
    result = probe(t)
    assert not result.ok
    assert "no such target" in result.error and "status class 2 detail 3" in result.error
    assert all(not lun.ok and "no such target" in lun.error for lun in result.luns)


def test_nothing_listening_fails_fast():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there now
    result = run_probe("127.0.0.1", IQN, [1, 2], port=port, timeout=TIMEOUT)
    assert not result.ok and result.error.startswith("connect:"), result.error
    assert [lun.lun for lun in result.luns] == [1, 2]


# --------------------------------------------------------------------------------------------
# A hostile target: the probe ends within its deadline and says why
# --------------------------------------------------------------------------------------------


def test_silent_target_times_out(target):
    t = target(lambda n, req: None)
    result = probe(t)
    assert result.error == "timed out (login)", result.error


def test_trickling_target_cannot_stretch_the_deadline(target):
    # Each byte arrives well within any per-read timeout; only the run's deadline stops it.
    t = target(replay(ANSWERS), trickle=0.02)
    result = probe(t, timeout=0.4)
    assert result.error.startswith("timed out"), result.error


def test_silent_after_login_times_out_at_the_command(target):
    t = target(lambda n, req: replay(ANSWERS)(n, req) if n < 2 else None)
    result = probe(t)
    assert result.error == "timed out (INQUIRY)", result.error
    assert result.luns[0].error == "timed out (INQUIRY)"


def test_a_logout_that_never_answers_does_not_fail_good_reads(target):
    """Seen in the VM lab under load: every LUN read, then the 2 s ran out waiting for the
    Logout Response. The storage served; the run counts as good and still ends in time."""
    t = target(lambda n, req: replay(ANSWERS)(n, req) if n < len(ANSWERS) - 1 else None)
    result = probe(t)
    assert result.ok and result.error == "", result.sentence()
    assert t.received[-1][0] & 0x3F == pdu.OP_LOGOUT_REQUEST
    assert result.seconds >= TIMEOUT - 0.05  # it did wait for the answer until the deadline


def test_the_isid_never_waits_for_the_entropy_pool(monkeypatch):
    """getrandom() blocks until the kernel's pool is ready (early after boot): the ISID is made
    without waiting, still of type random and different each run."""
    from iscsi_ha.controller.systems import iscsi_probe

    def not_ready(n, flags=0):
        assert flags & os.GRND_NONBLOCK, "a blocking getrandom() in the probe's path"
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "getrandom", not_ready)
    monkeypatch.setattr(os, "urandom", lambda n: pytest.fail("os.urandom may block"))
    isids = {iscsi_probe.new_isid() for _ in range(50)}
    assert len(isids) == 50 and all(len(i) == 6 and i[0] == 0x80 for i in isids)


def test_closed_mid_pdu(target):
    t = target(lambda n, req: TARGET_PDUS[0][:30] if n == 0 else None)
    # The fake closes after the half PDU only when its reader fails; make it close at once.
    t.answer = lambda n, req: (_ for _ in ()).throw(EOFError())
    result = probe(t)
    assert "closed the connection" in result.error or result.error.startswith("timed out")


def test_huge_data_segment_is_refused_before_reading(target):
    big = bytearray(TARGET_PDUS[0][:48])
    big[5:8] = b"\xff\xff\xff"  # 16 MiB announced, the most 24 bits say
    t = target(lambda n, req: bytes(big))
    result = probe(t)
    assert "more than the 65536" in result.error, result.error


def test_data_in_larger_than_asked_is_refused(target):
    pdus = list(ANSWERS)
    # The INQUIRY answer (third) claims 9000 bytes: more than our MaxRecvDataSegmentLength.
    inq = bytearray(pdus[2][:48]) + bytes(9000)
    inq[5:8] = (9000).to_bytes(3, "big")
    pdus[2] = bytes(inq)
    t = target(replay(pdus))
    result = probe(t)
    assert not result.ok and "8192" in result.luns[0].error + result.error


def test_nop_in_flood_is_bounded(target):
    nop = bytearray(48)
    nop[0] = pdu.OP_NOP_IN
    nop[1] = 0x80
    nop[16:24] = b"\xff" * 4 + b"\x00\x00\x00\x01"  # ITT none, TTT 1: asks for an answer
    flood = bytes(nop) * 500

    def answer(n: int, req: bytes) -> Optional[bytes]:
        return replay(ANSWERS)(n, req) if n < 2 else flood

    t = target(answer)
    result = probe(t)
    assert not result.ok
    assert (
        "no status after many PDUs" in result.luns[0].error + result.error
        or "timed out" in result.error
    )


def test_wrong_task_tag_is_refused(target):
    def answer(n: int, req: bytes) -> Optional[bytes]:
        reply = replay(ANSWERS)(n, req)
        if n == 2 and reply:
            reply = reply[:16] + b"\x12\x34\x56\x78" + reply[20:]
        return reply

    result = probe(target(answer))
    assert "answer for task 0x12345678" in result.error + result.luns[0].error


def test_reject_is_reported(target):
    rej = bytearray(48)
    rej[0] = pdu.OP_REJECT
    rej[1] = 0x80
    rej[2] = 0x04  # protocol error
    result = probe(target(lambda n, req: bytes(rej)))
    assert "rejected our PDU (reason 0x04)" in result.error


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_damage_to_the_session_ends_in_a_result(data):
    pdus = list(ANSWERS)
    i = data.draw(st.integers(0, len(pdus) - 1))
    raw = bytearray(pdus[i])
    how = data.draw(st.sampled_from(["flip", "truncate", "garbage"]))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw = bytearray(data.draw(st.binary(min_size=1, max_size=200)))
    pdus[i] = bytes(raw)
    t = FakeTarget(replay(pdus, itt_from_request=data.draw(st.booleans())))
    try:
        result = probe(t, timeout=0.3)
    finally:
        t.close()
    assert result.ok or result.error or not all(lun.ok for lun in result.luns)


# --------------------------------------------------------------------------------------------
# The pure PDU functions
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(st.binary(min_size=48, max_size=48))
def test_parse_header_refuses_or_bounds(raw):
    try:
        h = pdu.parse_header(raw)
    except pdu.PduError as exc:
        assert str(exc)
        return
    assert h.data_length <= pdu.MAX_DATA_SEGMENT and h.ahs_length <= 255 * 4


@SETTINGS
@given(st.binary(max_size=2000))
def test_parse_text_refuses_or_bounds(raw):
    try:
        keys = pdu.parse_text(raw)
    except pdu.PduError as exc:
        assert str(exc)
        return
    assert len(keys) <= pdu.MAX_TEXT_KEYS


def test_parse_text_of_the_real_login_answer():
    h = pdu.parse_header(TARGET_PDUS[1][:48])
    resp = pdu.parse_login_response(h, TARGET_PDUS[1][48 : 48 + h.data_length])
    assert resp.transit and resp.nsg == pdu.FULL_FEATURE and resp.status_class == 0
    assert resp.keys["HeaderDigest"] == "None" and resp.keys["DataDigest"] == "None"
    assert resp.keys["ErrorRecoveryLevel"] == "0" and resp.keys["MaxConnections"] == "1"
    h = pdu.parse_header(TARGET_PDUS[0][:48])
    first = pdu.parse_login_response(h, TARGET_PDUS[0][48 : 48 + h.data_length])
    assert first.keys == {"TargetPortalGroupTag": "1", "AuthMethod": "None"}
    assert (first.csg, first.nsg) == (pdu.SECURITY, pdu.OPERATIONAL)


def test_text_limits():
    with pytest.raises(pdu.PduError, match="more than 64"):
        pdu.parse_text(b"".join(b"k%d=v\x00" % i for i in range(65)))
    with pytest.raises(pdu.PduError, match="too long"):
        pdu.parse_text(b"K=" + b"v" * 9000)
    with pytest.raises(pdu.PduError, match="without key=value"):
        pdu.parse_text(b"novalue\x00")


@SETTINGS
@given(st.binary(max_size=64))
def test_scsi_payload_parsers_refuse_or_answer(raw):
    for parse in (pdu.parse_inquiry, pdu.parse_read_capacity10, pdu.parse_sense_segment):
        try:
            parse(raw)
        except pdu.PduError as exc:
            assert str(exc)


def test_encoders_follow_rfc7143_layout():
    req = pdu.login_request(
        b"\x80\x01\x02\x03\x04\x05", 7, 1, 0, pdu.SECURITY, pdu.OPERATIONAL, [("A", "b")]
    )
    assert req[0] == 0x43 and req[1] == 0x81 and req[8:14] == b"\x80\x01\x02\x03\x04\x05"
    assert struct.unpack(">I", req[16:20])[0] == 7 and req[5:8] == b"\x00\x00\x04"
    assert req[48:] == b"A=b\x00" and len(req) % 4 == 0
    cmd = pdu.scsi_command(1, 9, 5, 6, pdu.read10_cdb(0, 1), 512)
    assert cmd[0] == 0x01 and cmd[1] == 0xC1 and cmd[8:16] == b"\x00\x01" + bytes(6)
    assert struct.unpack(">IIII", cmd[16:32]) == (9, 512, 5, 6) and cmd[32] == 0x28
    assert pdu.encode_lun(300)[:2] == b"\x41\x2c"
    with pytest.raises(ValueError):
        pdu.encode_lun(20000)


# --------------------------------------------------------------------------------------------
# The hand-over and the cumulative figures
# --------------------------------------------------------------------------------------------


def test_history_counts_runs_failures_and_durations(target):
    latest = LatestProbe("node2")
    ok = probe(target(replay(ANSWERS)))
    bad = probe(target(replay([NO_TARGET])))
    latest.publish(ok)
    h = latest.publish(bad)
    assert latest.get() is h and h.last is bad and h.observer == "node2"
    assert h.runs == {1: 2} and h.failures == {1: 1}
    assert h.bucket_counts[-1] == 2 and len(h.bucket_counts) == len(DURATION_BUCKETS) + 1
    assert list(h.bucket_counts) == sorted(h.bucket_counts)  # cumulative
    assert h.duration_sum == pytest.approx(ok.seconds + bad.seconds)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def test_settings_from_the_configuration():
    from iscsi_ha.controller.config import parse_config
    from iscsi_ha.controller.probe import settings_from_config

    base = {
        "resources": ["iscsi1", "iscsi2"],
        "vip": {"address": "10.10.10.3/24"},
        "node_name": "XS 1",
        "interval": 5,
    }
    s = settings_from_config(parse_config(base))
    assert s is not None
    assert (s.host, s.port, s.luns, s.interval, s.timeout) == ("10.10.10.3", 3260, (1, 2), 5, 2)
    assert s.initiator == "iqn.2024-01.org.iscsi-ha:probe.xs-1"
    s = settings_from_config(
        parse_config({**base, "probe": {"interval": 1, "timeout": 3, "port": 3261}})
    )
    assert s is not None and (s.interval, s.timeout, s.port) == (1, 1, 3261)
    assert settings_from_config(parse_config({**base, "probe": {"enabled": False}})) is None


def test_job_logs_changes_not_every_run(target, caplog):
    import logging

    from iscsi_ha.controller.probe import ProbeJob, ProbeSettings

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed_port = s.getsockname()[1]
    s.close()
    job = ProbeJob(
        ProbeSettings(host="127.0.0.1", target=IQN, luns=(1,), port=closed_port, timeout=TIMEOUT),
        "node2",
    )
    caplog.set_level(logging.DEBUG, logger="iscsi_ha.probe")
    job.run()
    job.run()  # the same failure: not logged again
    job.settings = ProbeSettings(
        host="127.0.0.1",
        target=IQN,
        luns=(1,),
        port=target(replay([NO_TARGET])).port,
        timeout=TIMEOUT,
    )
    job.run()  # another step fails: logged
    job.settings = ProbeSettings(
        host="127.0.0.1", target=IQN, luns=(1,), port=target(replay(ANSWERS)).port, timeout=TIMEOUT
    )
    job.run()  # recovered: logged
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [lvl for lvl, _ in lines] == ["WARNING", "WARNING", "INFO"], lines
    assert "connect:" in lines[0][1] and "no such target" in lines[1][1]
    assert "1 LUN(s) read" in lines[2][1]
    assert job.history().runs == {1: 4} and job.history().failures == {1: 3}
