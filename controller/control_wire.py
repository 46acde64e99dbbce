"""The control socket's framing: one JSON object per connection, one line each way.

Reading is bounded in size and in time (a client that connects and sends nothing, or dribbles,
is cut off after ``read_timeout`` seconds in total); what is wrong with a request is a
``BadRequest`` whose message quotes a little of it. Writing never blocks the server for long.
Nothing here knows what the requests mean (``control_requests.py``) or how connections are
accepted (``control.py``).
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import struct
import time
from typing import Any, Dict, Tuple

log = logging.getLogger("iscsi_ha.control")

MAX_REQUEST = 64 * 1024  # bytes; a real request is a few dozen
READ_TIMEOUT = 5.0  # seconds for a whole request to arrive
WRITE_TIMEOUT = 5.0
DRAIN_SECONDS = 1.0  # after an oversize request: read (and drop) the rest this long, then close
DRAIN_BYTES = 16 * 1024 * 1024

# ``code`` in an answer: the exit code iscsi-cfg should use.
CODE_OK, CODE_REFUSED, CODE_BAD_REQUEST = 0, 1, 2


class BadRequest(Exception):
    def __init__(self, message: str, drain: bool = False) -> None:
        super().__init__(message)
        self.drain = drain


class Probe(Exception):
    """A connection closed before sending anything (``socket_answers`` of a second controller)."""


def error_answer(message: str, code: int = CODE_BAD_REQUEST) -> Dict[str, Any]:
    return {"ok": False, "code": code, "error": message}


def peer_credentials(conn: socket.socket) -> Tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def parse_request(raw: bytes) -> Dict[str, Any]:
    """The request object, or BadRequest saying what is wrong with it (quoting a little)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"malformed request, not JSON ({exc}): {quote(raw)}") from None
    if not isinstance(data, dict):
        raise BadRequest(
            f"malformed request: expected a JSON object like "
            f'{{"cmd": "status"}}, got {type(data).__name__}'
        )
    cmd = data.get("cmd")
    if not isinstance(cmd, str):
        raise BadRequest('malformed request: "cmd" must be a string, e.g. {"cmd": "status"}')
    return data


def quote(raw: bytes, limit: int = 80) -> str:
    text = raw[:limit].decode("utf-8", errors="replace")
    return repr(text) + ("..." if len(raw) > limit else "")


def encode(answer: Dict[str, Any]) -> bytes:
    return (json.dumps(answer, sort_keys=True, default=str) + "\n").encode("utf-8")


def read_request(conn: socket.socket, read_timeout: float, max_request: int) -> bytes:
    """The request line: up to a newline or EOF, within ``read_timeout`` seconds in total.

    Raises Probe for a connection closed without a byte, BadRequest for anything else wrong
    (with ``drain`` set when the client may still be sending).
    """
    deadline = time.monotonic() + read_timeout
    buf = bytearray()
    while True:
        newline = buf.find(b"\n")
        if newline >= 0:
            if newline > max_request:
                break
            return bytes(buf[:newline])
        if len(buf) > max_request:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BadRequest(f"timeout: no complete request within {read_timeout:g}s")
        conn.settimeout(remaining)
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            raise BadRequest(f"timeout: no complete request within {read_timeout:g}s") from None
        except OSError as exc:
            raise BadRequest(f"cannot read the request: {exc}") from None
        if not chunk:  # EOF ends a request as well as a newline does
            if not buf:
                raise Probe()
            if not buf.strip():
                raise BadRequest("empty request")
            return bytes(buf)
        buf += chunk
    raise BadRequest(f"request too large (limit {max_request} bytes)", drain=True)


def drain(conn: socket.socket) -> None:
    """Read and drop what an oversize client is still sending (bounded), so that it is not cut
    off mid-send and can read our error answer."""
    deadline = time.monotonic() + DRAIN_SECONDS
    total = 0
    try:
        conn.shutdown(socket.SHUT_WR)
        while total < DRAIN_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            conn.settimeout(remaining)
            chunk = conn.recv(65536)
            if not chunk:
                return
            total += len(chunk)
    except OSError:
        return


def send(conn: socket.socket, answer: Dict[str, Any]) -> None:
    try:
        conn.settimeout(WRITE_TIMEOUT)
        conn.sendall(encode(answer))
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET, None):
            log.info("control socket: cannot answer: %s", exc)


def send_and_close(conn: socket.socket, answer: Dict[str, Any], wait: float = 0.5) -> None:
    try:
        # A short answer fits the socket buffer; a client that does not read gets nothing more
        # from the accept loop than that.
        conn.settimeout(wait)
        conn.sendall(encode(answer))
    except OSError:
        pass
    finally:
        conn.close()
