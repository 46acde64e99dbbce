#!/usr/bin/env python3
"""Write or read whole blocks of an iSCSI LUN with libiscsi (``libiscsi.so.7``) through ctypes.

libiscsi-bin ships no tool that writes caller-supplied data (``iscsi-inq``, ``iscsi-ls``,
``iscsi-readcapacity16``, ``iscsi-perf``, ``iscsi-swp``, ``iscsi-test-cu`` only), and the machine
has no kernel initiator, so the lab's client does its block I/O here. The lab runs it inside the
client namespace under timeout(1) (libiscsi's sync calls have no deadline of their own, although
``iscsi_set_timeout`` bounds each PDU)::

    iscsi_block.py write iscsi://10.99.0.3/IQN/1 LBA HEX     -> {"ok": true}
    iscsi_block.py read  iscsi://10.99.0.3/IQN/1 LBA BLOCKS  -> {"ok": true, "data": HEX}
    iscsi_block.py vpd   iscsi://10.99.0.3/IQN/1 0 PAGE    -> {"ok": true, "data": HEX}

``stream`` writes MIB mebibytes of random data from LBA on in CHUNK_KIB writes over one session
(``iscsi_block.py stream URL LBA MIB:CHUNK_KIB`` -> {"ok": true, "seconds": S, "bytes": N}): the
write throughput through the LUN, for bench/bench_target.py.

``vpd`` is INQUIRY with EVPD=1 for page PAGE (128 = 0x80 unit serial, 131 = 0x83 device
identification): the page's raw bytes, so two targets' identities compare byte for byte.

Only stable ABI is used: the ``*_iov_sync`` calls read into and write from our own buffers, and
of ``struct scsi_task`` only its first member (``int status``) is read. Stdlib only.
"""

from __future__ import annotations

import ctypes
import json
import sys
from typing import Any, Dict, Tuple

BLOCK = 512
ISCSI_SESSION_NORMAL = 2
ISCSI_HEADER_DIGEST_NONE = 0
SCSI_STATUS_GOOD = 0


class ScsiIovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def parse_url(url: str) -> Tuple[str, str, int]:
    """iscsi://HOST[:PORT]/IQN/LUN -> (portal, iqn, lun)."""
    if not url.startswith("iscsi://"):
        raise ValueError(f"not an iscsi:// URL: {url!r}")
    portal, iqn, lun = url[len("iscsi://") :].split("/", 2)
    if ":" not in portal:
        portal += ":3260"
    return portal, iqn, int(lun)


def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL("libiscsi.so.7")
    lib.iscsi_create_context.restype = ctypes.c_void_p
    lib.iscsi_create_context.argtypes = [ctypes.c_char_p]
    lib.iscsi_get_error.restype = ctypes.c_char_p
    lib.iscsi_get_error.argtypes = [ctypes.c_void_p]
    for name in ("iscsi_set_targetname",):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.iscsi_set_session_type.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.iscsi_set_header_digest.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.iscsi_set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.iscsi_full_connect_sync.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.iscsi_logout_sync.argtypes = [ctypes.c_void_p]
    lib.iscsi_destroy_context.argtypes = [ctypes.c_void_p]
    lib.scsi_free_scsi_task.argtypes = [ctypes.c_void_p]
    io_args = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_uint64,  # iscsi, lun, lba
    ]
    lib.iscsi_write16_iov_sync.restype = ctypes.c_void_p
    lib.iscsi_write16_iov_sync.argtypes = io_args + [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,  # data, datalen, blocksize
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.POINTER(ScsiIovec),
        ctypes.c_int,
    ]
    lib.iscsi_read16_iov_sync.restype = ctypes.c_void_p
    lib.iscsi_read16_iov_sync.argtypes = io_args + [
        ctypes.c_uint32,
        ctypes.c_int,  # datalen, blocksize
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.POINTER(ScsiIovec),
        ctypes.c_int,
    ]
    lib.scsi_cdb_inquiry.restype = ctypes.c_void_p
    lib.scsi_cdb_inquiry.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.scsi_task_set_iov_in.argtypes = [ctypes.c_void_p, ctypes.POINTER(ScsiIovec), ctypes.c_int]
    lib.iscsi_scsi_command_sync.restype = ctypes.c_void_p
    lib.iscsi_scsi_command_sync.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    return lib


VPD_ALLOC = 255  # every page this lab reads fits; the page's own length field says how much is used


def _vpd(lib: ctypes.CDLL, ctx: int, lun: int, page: int) -> Tuple[int, bytes]:
    """(task or 0, the page's bytes): INQUIRY EVPD into our own buffer (no task internals read)."""
    task = lib.scsi_cdb_inquiry(1, page, VPD_ALLOC)
    if not task:
        return 0, b""
    buf = ctypes.create_string_buffer(VPD_ALLOC)
    iov = ScsiIovec(ctypes.cast(buf, ctypes.c_void_p), VPD_ALLOC)
    lib.scsi_task_set_iov_in(task, ctypes.byref(iov), 1)
    if not lib.iscsi_scsi_command_sync(ctx, lun, task, None):
        return 0, b""  # not freed: on failure libiscsi may still hold it (a one-shot process)
    length = 4 + int.from_bytes(buf.raw[2:4], "big")  # header + PAGE LENGTH
    return task, buf.raw[: min(length, VPD_ALLOC)]


def transfer(url: str, op: str, lba: int, arg: str) -> Dict[str, Any]:
    portal, iqn, lun = parse_url(url)
    lib = _lib()
    ctx = lib.iscsi_create_context(b"iqn.2024-01.org.iscsi-ha:lab-client")
    if not ctx:
        return {"ok": False, "error": "iscsi_create_context failed"}

    def error(what: str) -> Dict[str, Any]:
        detail = lib.iscsi_get_error(ctx) or b""
        return {"ok": False, "error": f"{what}: {detail.decode(errors='replace')}"}

    try:
        lib.iscsi_set_targetname(ctx, iqn.encode())
        lib.iscsi_set_session_type(ctx, ISCSI_SESSION_NORMAL)
        lib.iscsi_set_header_digest(ctx, ISCSI_HEADER_DIGEST_NONE)
        lib.iscsi_set_timeout(ctx, 3)
        if lib.iscsi_full_connect_sync(ctx, portal.encode(), lun) != 0:
            return error(f"login to {portal} {iqn} lun {lun}")
        if op == "write":
            data = bytes.fromhex(arg)
            if not data or len(data) % BLOCK:
                return {"ok": False, "error": f"data must be whole {BLOCK}-byte blocks"}
            buf = ctypes.create_string_buffer(data, len(data))
            iov = ScsiIovec(ctypes.cast(buf, ctypes.c_void_p), len(data))
            task = lib.iscsi_write16_iov_sync(
                ctx, lun, lba, None, len(data), BLOCK, 0, 0, 0, 0, 0, ctypes.byref(iov), 1
            )
            result: Dict[str, Any] = {"ok": True}
        elif op == "stream":
            import os
            import time

            mib, chunk_kib = (int(x) for x in arg.split(":"))
            size = chunk_kib * 1024
            buf = ctypes.create_string_buffer(os.urandom(size), size)
            iov = ScsiIovec(ctypes.cast(buf, ctypes.c_void_p), size)
            t0 = time.monotonic()
            for i in range(mib * 1024 // chunk_kib):
                task = lib.iscsi_write16_iov_sync(
                    ctx,
                    lun,
                    lba + i * (size // BLOCK),
                    None,
                    size,
                    BLOCK,
                    0,
                    0,
                    0,
                    0,
                    0,
                    ctypes.byref(iov),
                    1,
                )
                status = (
                    ctypes.cast(task, ctypes.POINTER(ctypes.c_int)).contents.value if task else -1
                )
                if task:
                    lib.scsi_free_scsi_task(task)
                if status != SCSI_STATUS_GOOD:
                    return {"ok": False, "error": f"write {i}: status {status}"}
            result = {"ok": True, "seconds": time.monotonic() - t0, "bytes": mib << 20}
            lib.iscsi_logout_sync(ctx)
            return result
        elif op == "vpd":
            task, page = _vpd(lib, ctx, lun, int(arg))
            result = {"ok": True, "data": page.hex()}
        else:
            size = int(arg) * BLOCK
            buf = ctypes.create_string_buffer(size)
            iov = ScsiIovec(ctypes.cast(buf, ctypes.c_void_p), size)
            task = lib.iscsi_read16_iov_sync(
                ctx, lun, lba, size, BLOCK, 0, 0, 0, 0, 0, ctypes.byref(iov), 1
            )
            result = {"ok": True, "data": buf.raw[:size].hex()}
        if not task:
            return error(f"{op} at lba {lba}")
        status = ctypes.cast(task, ctypes.POINTER(ctypes.c_int)).contents.value
        lib.scsi_free_scsi_task(task)
        if status != SCSI_STATUS_GOOD:
            return {"ok": False, "error": f"{op} at lba {lba}: SCSI status {status:#x}"}
        lib.iscsi_logout_sync(ctx)
        return result
    finally:
        lib.iscsi_destroy_context(ctx)


def main(argv: Any = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4 or args[0] not in ("read", "write", "vpd", "stream"):
        print(__doc__.split("\n\n")[2], file=sys.stderr)
        return 2
    op, url, lba, arg = args
    try:
        result = transfer(url, op, int(lba), arg)
    except (OSError, ValueError) as exc:
        result = {"ok": False, "error": str(exc)}
    print(json.dumps(result), flush=True)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
