"""What every ``iscsi-cfg`` command module shares: the exit codes, the error line, and the client
of the controller's control socket.

``cli.py`` (the command line) and ``splitbrain_cli.py`` (one of its commands) both build on this;
neither imports the other's internals, so there is no import cycle between them (.importlinter).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any, Dict, Optional

from .control import root_socket_path

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

QUERY_TIMEOUT = 10.0  # status, get, log: answered from the snapshot, normally in milliseconds
MAX_ANSWER = 16 * 1024 * 1024


class Unreachable(Exception):
    """The controller did not answer (no socket, connection refused, timeout, garbled answer)."""


class Denied(Exception):
    """The operating system refused the connection: only root may use the socket."""


# --------------------------------------------------------------------------------------------
# Talking to the controller
# --------------------------------------------------------------------------------------------


def ask(path: str, request: Dict[str, Any], timeout: Optional[float] = None) -> Dict[str, Any]:
    """Send one request, return the answer object. Raises Unreachable or Denied.

    Root asks on the controller's root-only socket when there is one (the main socket is then
    open to every local user, who could keep it busy); if that does not answer, on the main one.
    """
    timeout = QUERY_TIMEOUT if timeout is None else timeout
    private = root_socket_path(path)
    if os.geteuid() == 0 and os.path.exists(private):
        try:
            return _ask(private, request, timeout)
        except Unreachable:
            pass  # a stale file left by a killed controller: the main socket decides
    return _ask(path, request, timeout)


def _ask(path: str, request: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            while True:
                try:
                    sock.connect(path)
                    break
                except BlockingIOError:  # EAGAIN: the listen queue is full right now; retry
                    if time.monotonic() >= deadline:
                        raise socket.timeout() from None
                    time.sleep(0.01)
        except FileNotFoundError:
            raise Unreachable(f"{path} does not exist") from None
        except ConnectionRefusedError:
            raise Unreachable(f"nothing listens on {path} (connection refused)") from None
        except PermissionError:
            raise Denied(
                f"permission denied on {path}: only root may use the iscsi-ha control "
                "socket (run iscsi-cfg as root)"
            ) from None
        except socket.timeout:
            raise Unreachable(f"no connection to {path} within {timeout:g}s") from None
        except OSError as exc:
            raise Unreachable(f"cannot connect to {path}: {exc.strerror or exc}") from None
        buf = bytearray()
        try:
            try:
                sock.sendall((json.dumps(request) + "\n").encode("utf-8"))
            except (BrokenPipeError, ConnectionResetError):
                pass  # answered and closed before reading ("busy", "permission denied"): read it
            while b"\n" not in buf and len(buf) <= MAX_ANSWER:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except socket.timeout:
            what = request.get("cmd", "?")
            raise Unreachable(f"no answer to {what} within {timeout:g}s") from None
        except OSError as exc:
            if not buf:
                raise Unreachable(f"connection to {path} failed: {exc.strerror or exc}") from None
    finally:
        sock.close()
    line = bytes(buf).split(b"\n", 1)[0]
    if not line:
        raise Unreachable(f"the controller closed {path} without an answer")
    try:
        answer = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Unreachable(f"garbled answer on {path}: {line[:80]!r}") from None
    if not isinstance(answer, dict):
        raise Unreachable(f"garbled answer on {path}: {line[:80]!r}")
    return answer


def answer_code(answer: Dict[str, Any]) -> int:
    """The exit code an error answer asks for (1 refused, 2 bad request); 1 when unclear."""
    code = answer.get("code")
    return code if code in (EXIT_REFUSED, EXIT_USAGE) else EXIT_REFUSED


def err(text: str) -> None:
    """One line on stderr, prefixed like every iscsi-cfg message."""
    print(f"iscsi-cfg: {text}", file=sys.stderr)
