"""iSCSI PDUs, the few a storage probe needs, encoded and decoded from RFC 7143: pure bytes in and
out, no sockets, no clock (the socket side is ``iscsi_probe.py``).

Why our own and not a library: the probe must never attach a block device to dom0, so the host's
open-iscsi (a kernel initiator) is out; libiscsi's Python bindings are not packaged for Debian or
XenServer's dom0, and the pure-Python initiators on PyPI are unmaintained. A probe needs a login,
three SCSI commands and a logout, in one connection, without digests: a few hundred lines.

Only what the probe uses is implemented: Login, SCSI Command, SCSI Data-In, SCSI Response,
NOP-In/NOP-Out (a target may ping us), Logout, Reject, Asynchronous Message. The parser treats the
target as hostile: every length is bounded before anything is allocated or read
(``MAX_DATA_SEGMENT``, ``MAX_TEXT_KEYS``), and anything malformed raises ``PduError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

BHS_LENGTH = 48
# What we announce as MaxRecvDataSegmentLength, and the most we ever accept in one PDU: a target
# that sends more is broken or hostile (RFC 7143 11.12.2 forbids it), and the probe stops.
MAX_RECV_DATA_SEGMENT = 8192
MAX_DATA_SEGMENT = 65536  # a Login/Text response may exceed ours only by the target's mistake
MAX_TEXT_KEYS = 64
MAX_TEXT_KEY = 63  # RFC 7143 6.1: key names up to 63 bytes
MAX_TEXT_VALUE = 8192

# Opcodes (RFC 7143 11.1.1). Initiator -> target:
OP_NOP_OUT = 0x00
OP_SCSI_COMMAND = 0x01
OP_LOGIN_REQUEST = 0x03
OP_LOGOUT_REQUEST = 0x06
# Target -> initiator:
OP_NOP_IN = 0x20
OP_SCSI_RESPONSE = 0x21
OP_LOGIN_RESPONSE = 0x23
OP_DATA_IN = 0x25
OP_LOGOUT_RESPONSE = 0x26
OP_ASYNC = 0x32
OP_REJECT = 0x3F
TARGET_OPCODES = frozenset(
    {
        OP_NOP_IN,
        OP_SCSI_RESPONSE,
        OP_LOGIN_RESPONSE,
        OP_DATA_IN,
        OP_LOGOUT_RESPONSE,
        OP_ASYNC,
        OP_REJECT,
        0x22,
        0x24,
        0x31,
    }
)

IMMEDIATE = 0x40
FINAL = 0x80
NO_TAG = 0xFFFFFFFF

# Login stages (RFC 7143 11.12.3).
SECURITY, OPERATIONAL, FULL_FEATURE = 0, 1, 3

# SCSI status bytes (SAM) we name in messages.
SCSI_STATUS = {
    0x00: "GOOD",
    0x02: "CHECK CONDITION",
    0x08: "BUSY",
    0x18: "RESERVATION CONFLICT",
    0x28: "TASK SET FULL",
}


class PduError(Exception):
    """The bytes from the target are not an iSCSI PDU we can accept."""


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """A Basic Header Segment, with the fields every PDU has."""

    raw: bytes
    opcode: int
    flags: int  # byte 1
    ahs_length: int  # bytes (TotalAHSLength * 4)
    data_length: int  # DataSegmentLength, without padding
    itt: int

    def u8(self, offset: int) -> int:
        return self.raw[offset]

    def u16(self, offset: int) -> int:
        return int(struct.unpack_from(">H", self.raw, offset)[0])

    def u32(self, offset: int) -> int:
        return int(struct.unpack_from(">I", self.raw, offset)[0])

    @property
    def padded_data_length(self) -> int:
        return pad4(self.data_length)

    @property
    def stat_sn(self) -> int:
        return self.u32(24)

    @property
    def exp_cmd_sn(self) -> int:
        return self.u32(28)


def pad4(n: int) -> int:
    return (n + 3) & ~3


def parse_header(raw: bytes, max_data: int = MAX_DATA_SEGMENT) -> Header:
    """Decode 48 bytes; PduError for a wrong size, an opcode no target sends, or a data segment
    longer than ``max_data`` (checked here, before anyone reads that many bytes)."""
    if len(raw) != BHS_LENGTH:
        raise PduError(f"a header is {BHS_LENGTH} bytes, got {len(raw)}")
    opcode = raw[0] & 0x3F
    if opcode not in TARGET_OPCODES:
        raise PduError(f"opcode 0x{opcode:02x} is not one a target sends")
    ahs = raw[4] * 4
    data = int.from_bytes(raw[5:8], "big")
    if data > max_data:
        raise PduError(
            f"data segment of {data} bytes announced, more than the {max_data} "
            "this initiator accepts"
        )
    return Header(
        raw=bytes(raw),
        opcode=opcode,
        flags=raw[1],
        ahs_length=ahs,
        data_length=data,
        itt=int.from_bytes(raw[16:20], "big"),
    )


def parse_text(data: bytes) -> Dict[str, str]:
    """Login/Text key=value pairs, NUL-separated (RFC 7143 6.1); bounded in number and size."""
    out: Dict[str, str] = {}
    if not data:
        return out
    items = data.split(b"\x00")
    if items and items[-1] == b"":
        items = items[:-1]
    if len(items) > MAX_TEXT_KEYS:
        raise PduError(f"{len(items)} text keys, more than {MAX_TEXT_KEYS}")
    for item in items:
        key, sep, value = item.partition(b"=")
        if not sep or not key:
            raise PduError(f"text item without key=value: {item[:40]!r}")
        if len(key) > MAX_TEXT_KEY or len(value) > MAX_TEXT_VALUE:
            raise PduError(f"text key or value too long: {key[:40]!r}")
        try:
            out[key.decode("ascii")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise PduError(f"text key {key[:40]!r} is not valid text") from None
    return out


@dataclass(frozen=True)
class LoginResponse:
    transit: bool
    csg: int
    nsg: int
    tsih: int
    stat_sn: int
    exp_cmd_sn: int
    status_class: int
    status_detail: int
    keys: Dict[str, str] = field(default_factory=dict)


def parse_login_response(h: Header, data: bytes) -> LoginResponse:
    if h.opcode != OP_LOGIN_RESPONSE:
        raise PduError(f"expected a Login Response, got opcode 0x{h.opcode:02x}")
    return LoginResponse(
        transit=bool(h.flags & 0x80),
        csg=(h.flags >> 2) & 3,
        nsg=h.flags & 3,
        tsih=h.u16(14),
        stat_sn=h.stat_sn,
        exp_cmd_sn=h.exp_cmd_sn,
        status_class=h.u8(36),
        status_detail=h.u8(37),
        keys=parse_text(data),
    )


@dataclass(frozen=True)
class ScsiResult:
    status: int
    data: bytes
    sense: bytes = b""

    @property
    def good(self) -> bool:
        return self.status == 0

    def describe(self) -> str:
        name = SCSI_STATUS.get(self.status, f"0x{self.status:02x}")
        if self.sense:
            key = sense_key(self.sense)
            return f"SCSI status {name} (sense key 0x{key:x})" if key is not None else name
        return f"SCSI status {name}"


def sense_key(sense: bytes) -> "int | None":
    if len(sense) >= 3 and sense[0] & 0x7F in (0x70, 0x71):
        return sense[2] & 0x0F
    if len(sense) >= 2 and sense[0] & 0x7F in (0x72, 0x73):
        return sense[1] & 0x0F
    return None


def parse_sense_segment(data: bytes) -> bytes:
    """A SCSI Response's data segment: SenseLength (2 bytes) then the sense data."""
    if len(data) < 2:
        return b""
    n = int.from_bytes(data[:2], "big")
    if n > len(data) - 2:
        raise PduError(f"sense length {n} exceeds the {len(data) - 2} bytes sent")
    return bytes(data[2 : 2 + n])


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def encode_text(keys: List[Tuple[str, str]]) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\x00" for k, v in keys)


def _pdu(bhs: bytearray, data: bytes = b"") -> bytes:
    assert len(bhs) == BHS_LENGTH
    bhs[5:8] = len(data).to_bytes(3, "big")
    return bytes(bhs) + data + b"\x00" * (pad4(len(data)) - len(data))


def login_request(
    isid: bytes,
    itt: int,
    cmd_sn: int,
    exp_stat_sn: int,
    csg: int,
    nsg: int,
    keys: List[Tuple[str, str]],
    tsih: int = 0,
    cid: int = 0,
) -> bytes:
    if len(isid) != 6:
        raise ValueError("an ISID is 6 bytes")
    bhs = bytearray(BHS_LENGTH)
    bhs[0] = IMMEDIATE | OP_LOGIN_REQUEST
    bhs[1] = 0x80 | (csg << 2) | nsg  # Transit to the next stage
    bhs[8:14] = isid
    struct.pack_into(">HIHxxII", bhs, 14, tsih, itt, cid, cmd_sn, exp_stat_sn)
    return _pdu(bhs, encode_text(keys))


def scsi_command(
    lun: int, itt: int, cmd_sn: int, exp_stat_sn: int, cdb: bytes, read_length: int
) -> bytes:
    """A READ-direction (or no-data) SCSI command, simple task attribute."""
    if len(cdb) > 16:
        raise ValueError("CDBs longer than 16 bytes need an AHS")
    bhs = bytearray(BHS_LENGTH)
    bhs[0] = OP_SCSI_COMMAND
    bhs[1] = FINAL | (0x40 if read_length else 0) | 0x01
    bhs[8:16] = encode_lun(lun)
    struct.pack_into(">IIII", bhs, 16, itt, read_length, cmd_sn, exp_stat_sn)
    bhs[32 : 32 + len(cdb)] = cdb
    return _pdu(bhs)


def nop_out_reply(ttt: int, lun: bytes, cmd_sn: int, exp_stat_sn: int) -> bytes:
    """The answer to a NOP-In that asks for one (TTT != 0xffffffff, RFC 7143 11.18)."""
    bhs = bytearray(BHS_LENGTH)
    bhs[0] = IMMEDIATE | OP_NOP_OUT
    bhs[1] = FINAL
    bhs[8:16] = lun
    struct.pack_into(">IIII", bhs, 16, NO_TAG, ttt, cmd_sn, exp_stat_sn)
    return _pdu(bhs)


def logout_request(itt: int, cmd_sn: int, exp_stat_sn: int, cid: int = 0) -> bytes:
    bhs = bytearray(BHS_LENGTH)
    bhs[0] = IMMEDIATE | OP_LOGOUT_REQUEST
    bhs[1] = FINAL | 0  # reason 0: close the session
    struct.pack_into(">IHxxII", bhs, 16, itt, cid, cmd_sn, exp_stat_sn)
    return _pdu(bhs)


def encode_lun(lun: int) -> bytes:
    """SAM-2 single-level LUN: peripheral addressing below 256, flat space up to 16383."""
    if 0 <= lun < 256:
        return bytes([0, lun]) + bytes(6)
    if lun < 16384:
        return bytes([0x40 | (lun >> 8), lun & 0xFF]) + bytes(6)
    raise ValueError(f"LUN {lun} out of range")


# CDBs (SPC-4 / SBC-3).


def inquiry_cdb(length: int = 96) -> bytes:
    return bytes([0x12, 0, 0]) + length.to_bytes(2, "big") + b"\x00"


def read_capacity10_cdb() -> bytes:
    return bytes([0x25]) + bytes(9)


def read10_cdb(lba: int, blocks: int) -> bytes:
    return bytes([0x28, 0]) + lba.to_bytes(4, "big") + b"\x00" + blocks.to_bytes(2, "big") + b"\x00"


@dataclass(frozen=True)
class Inquiry:
    peripheral_type: int
    vendor: str
    product: str


def parse_inquiry(data: bytes) -> Inquiry:
    if len(data) < 36:
        raise PduError(f"INQUIRY returned {len(data)} bytes, fewer than the standard 36")

    def text(b: bytes) -> str:
        return b.decode("ascii", "replace").strip()

    return Inquiry(
        peripheral_type=data[0] & 0x1F, vendor=text(data[8:16]), product=text(data[16:32])
    )


def parse_read_capacity10(data: bytes) -> Tuple[int, int]:
    """(last LBA, block length); PduError for a block length no disk has."""
    if len(data) < 8:
        raise PduError(f"READ CAPACITY(10) returned {len(data)} bytes, not 8")
    last, block = struct.unpack_from(">II", data)
    if not 512 <= block <= 65536 or block & (block - 1):
        raise PduError(f"READ CAPACITY(10) reports a block length of {block} bytes")
    return last, block
