"""The storage probe: this host checks the storage the way a VM's host does, as an iSCSI client of
the VIP.

Each run opens one TCP connection to the portal (the VIP, port 3260), logs in to our target
(security stage with AuthMethod=None, then operational, no digests), and for every configured LUN
sends INQUIRY, READ CAPACITY(10) and a READ(10) of block 0, then logs out. Nothing is attached to
the host: the PDUs are ours (``iscsi_pdu.py``), not the kernel's (open-iscsi would create a block
device in dom0 and leave sessions behind).

The whole run has one hard deadline (``timeout``): every socket operation gets what is left of it,
so a target that accepts and then says nothing, or trickles bytes, costs at most ``timeout``
seconds. The daemon runs the probe as its own scheduler job (``controller/probe.py``), so even that
never delays a cycle or a scrape; the result is a frozen ``report.ProbeResult``.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
import zlib
from typing import Callable, Dict, Optional, Sequence, Tuple

from ..report import LunProbe, ProbeResult
from . import iscsi_pdu as pdu
from .iscsi_pdu import PduError

DEFAULT_PORT = 3260
DEFAULT_INITIATOR = "iqn.2024-01.org.iscsi-ha:probe"


class ProbeError(Exception):
    """The storage did not answer as a working iSCSI target; the message says at which step."""


class Deadline:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._end = clock() + seconds

    def left(self, step: str) -> float:
        left = self._end - self._clock()
        if left <= 0:
            raise ProbeError(f"timed out ({step})")
        return left


class Connection:
    """One iSCSI connection over a socket, every read bounded by the deadline."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self.sock = sock
        self.deadline = deadline
        self.itt = 0
        self.cmd_sn = 1
        self.exp_stat_sn = 0

    def send(self, data: bytes, step: str) -> None:
        self.sock.settimeout(self.deadline.left(step))
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise ProbeError(f"timed out ({step})") from None
        except OSError as exc:
            raise ProbeError(f"{step}: {exc.strerror or exc}") from None

    def _read(self, n: int, step: str) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            self.sock.settimeout(self.deadline.left(step))
            try:
                chunk = self.sock.recv(min(n - len(buf), 65536))
            except socket.timeout:
                raise ProbeError(f"timed out ({step})") from None
            except OSError as exc:
                raise ProbeError(f"{step}: {exc.strerror or exc}") from None
            if not chunk:
                raise ProbeError(f"{step}: the target closed the connection")
            buf += chunk
        return bytes(buf)

    def receive(self, step: str, max_data: int = pdu.MAX_DATA_SEGMENT) -> Tuple[pdu.Header, bytes]:
        try:
            h = pdu.parse_header(self._read(pdu.BHS_LENGTH, step), max_data)
        except PduError as exc:
            raise ProbeError(f"{step}: {exc}") from None
        if h.ahs_length:
            self._read(h.ahs_length, step)  # bounded: at most 255 * 4 bytes; not used here
        data = self._read(h.padded_data_length, step)[: h.data_length] if h.data_length else b""
        if h.opcode == pdu.OP_REJECT:
            raise ProbeError(f"{step}: the target rejected our PDU (reason 0x{h.u8(2):02x})")
        return h, data

    def next_itt(self) -> int:
        self.itt = (self.itt + 1) & 0x7FFFFFFF
        return self.itt


def _login(conn: Connection, isid: bytes, initiator: str, target: str) -> None:
    step = "login"
    stage_keys = {
        pdu.SECURITY: [
            ("InitiatorName", initiator),
            ("SessionType", "Normal"),
            ("TargetName", target),
            ("AuthMethod", "None"),
        ],
        pdu.OPERATIONAL: [
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", str(pdu.MAX_RECV_DATA_SEGMENT)),
            ("ErrorRecoveryLevel", "0"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxConnections", "1"),
            ("DefaultTime2Wait", "0"),
            ("DefaultTime2Retain", "0"),
        ],
    }
    csg, tsih, itt = pdu.SECURITY, 0, conn.next_itt()
    for _ in range(6):  # at most a few round trips: a target that never moves on is broken
        nsg = pdu.OPERATIONAL if csg == pdu.SECURITY else pdu.FULL_FEATURE
        conn.send(
            pdu.login_request(
                isid, itt, conn.cmd_sn, conn.exp_stat_sn, csg, nsg, stage_keys[csg], tsih=tsih
            ),
            step,
        )
        h, data = conn.receive(step)
        try:
            resp = pdu.parse_login_response(h, data)
        except PduError as exc:
            raise ProbeError(f"{step}: {exc}") from None
        if resp.status_class:
            raise ProbeError(
                f"login refused: status class {resp.status_class} detail "
                f"{resp.status_detail}"
                + (" (no such target)" if (resp.status_class, resp.status_detail) == (2, 3) else "")
            )
        conn.exp_stat_sn = (resp.stat_sn + 1) & 0xFFFFFFFF
        tsih = resp.tsih
        if resp.transit:
            if resp.nsg == pdu.FULL_FEATURE:
                conn.cmd_sn = resp.exp_cmd_sn
                return
            csg = resp.nsg if resp.nsg in stage_keys else pdu.OPERATIONAL
    raise ProbeError("login: the target never reached the full-feature phase")


def command(conn: Connection, lun: int, cdb: bytes, length: int, step: str) -> pdu.ScsiResult:
    itt = conn.next_itt()
    conn.send(pdu.scsi_command(lun, itt, conn.cmd_sn, conn.exp_stat_sn, cdb, length), step)
    conn.cmd_sn = (conn.cmd_sn + 1) & 0xFFFFFFFF
    data = bytearray()
    for _ in range(64 + length // 512):  # bounded: Data-In PDUs plus the odd NOP-In
        h, seg = conn.receive(step, max_data=pdu.MAX_RECV_DATA_SEGMENT)
        if h.opcode == pdu.OP_NOP_IN:
            if h.u32(20) != pdu.NO_TAG:
                conn.send(
                    pdu.nop_out_reply(h.u32(20), h.raw[8:16], conn.cmd_sn, conn.exp_stat_sn), step
                )
            continue
        if h.opcode == pdu.OP_ASYNC:
            continue  # e.g. "logout requested": this run ends soon anyway
        if h.itt != itt:
            raise ProbeError(f"{step}: answer for task 0x{h.itt:x}, expected 0x{itt:x}")
        if h.opcode == pdu.OP_DATA_IN:
            offset = h.u32(40)
            if offset != len(data) or len(data) + len(seg) > length:
                raise ProbeError(
                    f"{step}: Data-In at offset {offset}, {len(seg)} bytes, "
                    f"outside the {length} asked for"
                )
            data += seg
            if h.flags & 0x01:  # S: the status came with the data
                conn.exp_stat_sn = (h.stat_sn + 1) & 0xFFFFFFFF
                return pdu.ScsiResult(status=h.u8(3), data=bytes(data))
            continue
        if h.opcode == pdu.OP_SCSI_RESPONSE:
            conn.exp_stat_sn = (h.stat_sn + 1) & 0xFFFFFFFF
            if h.u8(2) != 0:
                raise ProbeError(f"{step}: iSCSI response 0x{h.u8(2):02x} (target failure)")
            try:
                sense = pdu.parse_sense_segment(seg)
            except PduError as exc:
                raise ProbeError(f"{step}: {exc}") from None
            return pdu.ScsiResult(status=h.u8(3), data=bytes(data), sense=sense)
        raise ProbeError(f"{step}: unexpected opcode 0x{h.opcode:02x}")
    raise ProbeError(f"{step}: no status after many PDUs")


UNIT_ATTENTION = 0x6
MAX_UNIT_ATTENTIONS = 4  # a new session gets one ("power on or reset") per LUN; a few more is odd


def checked(conn: Connection, lun: int, cdb: bytes, length: int, step: str) -> bytes:
    """The data of a command that ended GOOD. A UNIT ATTENTION is a report, not a failure: the
    target tells a new session about the last reset, and the command is sent again (as every
    initiator does)."""
    for _ in range(MAX_UNIT_ATTENTIONS):
        result = command(conn, lun, cdb, length, step)
        if result.good:
            return result.data
        if pdu.sense_key(result.sense) != UNIT_ATTENTION:
            break
    raise ProbeError(f"{step}: {result.describe()}")


def probe_lun(conn: Connection, lun: int, clock: Callable[[], float]) -> LunProbe:
    t0 = clock()
    try:
        inq = pdu.parse_inquiry(checked(conn, lun, pdu.inquiry_cdb(), 96, "INQUIRY"))
        if inq.peripheral_type != 0:
            raise ProbeError(
                f"INQUIRY: LUN {lun} is device type {inq.peripheral_type}, not a disk (not served?)"
            )
        cap = checked(conn, lun, pdu.read_capacity10_cdb(), 8, "READ CAPACITY")
        _, block = pdu.parse_read_capacity10(cap)
        data = checked(conn, lun, pdu.read10_cdb(0, 1), block, "READ")
        if len(data) != block:
            raise ProbeError(f"READ: {len(data)} bytes of a {block}-byte block")
    except PduError as exc:
        return LunProbe(lun, False, clock() - t0, str(exc))
    except ProbeError as exc:
        if "timed out" in str(exc) or "closed" in str(exc):
            raise  # the connection is gone: the other LUNs cannot be read either
        return LunProbe(lun, False, clock() - t0, str(exc))
    return LunProbe(
        lun,
        True,
        clock() - t0,
        vendor=inq.vendor,
        product=inq.product,
        block_size=block,
        block0_crc32=zlib.crc32(data),
    )


def _logout(conn: Connection) -> None:
    itt = conn.next_itt()
    conn.send(pdu.logout_request(itt, conn.cmd_sn, conn.exp_stat_sn), "logout")
    for _ in range(8):
        h, _ = conn.receive("logout")
        if h.opcode == pdu.OP_LOGOUT_RESPONSE:
            if h.u8(2) != 0:
                raise ProbeError(f"logout: response {h.u8(2)}")
            return
    raise ProbeError("logout: no Logout Response")


_ISIDS = itertools.count()


def new_isid() -> bytes:
    """An ISID of type "random" (0x80) and 5 bytes, so two probes never share a session. Never
    blocks: ``os.urandom`` waits in getrandom() until the kernel's pool is ready, which a freshly
    booted host without a hardware RNG can take a while to be - outside the probe's deadline."""
    try:
        tail = os.getrandom(5, os.GRND_NONBLOCK)
    except (AttributeError, OSError):  # not ready yet (EAGAIN), or not Linux
        seed = time.time_ns() ^ (os.getpid() << 24) ^ next(_ISIDS)
        tail = (seed & 0xFFFFFFFFFF).to_bytes(5, "big")
    return b"\x80" + tail


def run_probe(
    host: str,
    target: str,
    luns: Sequence[int],
    *,
    port: int = DEFAULT_PORT,
    timeout: float = 2.0,
    initiator: str = DEFAULT_INITIATOR,
    source: Optional[str] = None,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> ProbeResult:
    """Connect, log in, read each LUN, log out; never raises, never takes longer than
    ``timeout`` (plus scheduling noise)."""
    started, t0 = wall(), clock()
    deadline = Deadline(timeout, clock)
    portal = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    results: Dict[int, LunProbe] = {}
    error = ""
    sock: Optional[socket.socket] = None
    try:
        try:
            sock = socket.create_connection(
                (host, port),
                timeout=deadline.left("connect"),
                source_address=(source, 0) if source else None,
            )
        except socket.timeout:
            raise ProbeError("connect: timed out") from None
        except OSError as exc:
            raise ProbeError(f"connect: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock, deadline)
        _login(conn, new_isid(), initiator, target)
        for lun in luns:
            results[lun] = probe_lun(conn, lun, clock)
        try:
            _logout(conn)
        except ProbeError:
            # Lost or late (a starved host, a target closing at once): the reads decide. What
            # VMs need was served or not; the socket is closed below either way.
            pass
    except ProbeError as exc:
        error = str(exc)
    except Exception as exc:  # a bug here must not end the job that runs the probe
        error = f"{type(exc).__name__}: {exc}"
    finally:
        if sock is not None:
            sock.close()
    elapsed = clock() - t0
    out = tuple(
        results.get(lun) or LunProbe(lun, False, elapsed, error or "not reached") for lun in luns
    )
    return ProbeResult(portal=portal, started=started, seconds=elapsed, luns=out, error=error)
