"""The control socket: how ``iscsi-cfg`` talks to the running controller.

A Unix stream socket (``paths.control_socket``, default ``/run/iscsi-ha/control.sock``) served by
one accept thread plus one short-lived thread per connection (at most ``max_connections`` at a
time; one more is told "busy" and closed). The protocol is one JSON object per connection, one
line each way::

    -> {"cmd": "status"}
    <- {"ok": true, "hostname": "xcp-host1", "manual": {...}, "last": {...}, ...}

    -> {"cmd": "become-primary"}
    <- {"ok": false, "code": 1, "message": "refused: the peer is Primary for iscsi1; ..."}

Requests: ``status`` (the last snapshot), ``get`` (the running configuration, secrets redacted),
``log`` (the last cycle sentences, ``"since": unix time``) and the four role commands, which go to
``Controller.command`` and so run under the controller's lock, never beside a cycle. ``code`` in
an answer is the exit code ``iscsi-cfg`` should use: 0 done, 1 refused for safety, 2 a bad request.

Why it is built this way:

* Only root may change storage roles. The file is mode 0600 (the filesystem refuses everybody
  else before we see them) and every peer's uid is checked with ``SO_PEERCRED`` against
  ``control.allowed_uids``. When that list names a non-root uid the file has to be 0666 for that
  user to connect at all; then ``SO_PEERCRED`` is the gate, and it is applied in the accept loop
  itself, before a connection gets a thread or a slot: any local user can connect, none but the
  allowed ones can occupy anything, and their refusals are logged once a minute per uid, not
  once per connection.
* Root is never crowded out. Slots are counted per uid: root (and the controller's own uid)
  may use all of them, every other allowed uid at most ``PER_UID_SLOTS``, and all of them
  together leave ``max_connections // 4`` free for root. An allowed monitoring user's connect
  loop makes its own requests "busy", never root's ``iscsi-cfg``.
* A bad client must not hurt the controller: a request has a size limit and a read deadline (a
  client that connects and sends nothing, or dribbles, is cut off after ``read_timeout`` seconds
  in total); garbage, oversize or unknown requests get a JSON error and the server carries on.
  ``status``, ``get`` and ``log`` read the published snapshot and never wait for a cycle.
* Never two controllers on one host: an existing socket file that still answers belongs to a
  running controller, so we refuse to start instead of stealing it. Only a dead one (connection
  refused) is replaced, atomically: the new socket is bound under a temporary name, given its
  mode, then renamed over the old one, so nobody ever sees a socket with the wrong mode.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import struct
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .commands import ROLE_COMMANDS, Command
from .model import Snapshot

log = logging.getLogger("iscsi_ha.control")

MAX_REQUEST = 64 * 1024  # bytes; a real request is a few dozen
READ_TIMEOUT = 5.0  # seconds for a whole request to arrive
WRITE_TIMEOUT = 5.0
MAX_CONNECTIONS = 16
PER_UID_SLOTS = 4  # connections at once for each allowed uid other than root
REFUSAL_LOG_PERIOD = 60.0  # seconds between two log lines about one refused uid
BACKLOG = 128  # connects that wait for the accept loop (it drains them in microseconds each)
DRAIN_SECONDS = 1.0  # after an oversize request: read (and drop) the rest this long, then close
DRAIN_BYTES = 16 * 1024 * 1024
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the final NUL

# The names, for the error answer to an unknown command ("known: ...").
COMMANDS: Tuple[str, ...] = tuple(c.value for c in Command)

CODE_OK, CODE_REFUSED, CODE_BAD_REQUEST = 0, 1, 2


class ControlSocketError(OSError):
    """The control socket cannot be set up (another controller owns it, the path is unusable)."""


class _BadRequest(Exception):
    def __init__(self, message: str, drain: bool = False) -> None:
        super().__init__(message)
        self.drain = drain


class _Probe(Exception):
    """A connection closed before sending anything (``socket_answers`` of a second controller)."""


def error_answer(message: str, code: int = CODE_BAD_REQUEST) -> Dict[str, Any]:
    return {"ok": False, "code": code, "error": message}


def peer_credentials(conn: socket.socket) -> Tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def parse_request(raw: bytes) -> Dict[str, Any]:
    """The request object, or _BadRequest saying what is wrong with it (quoting a little)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _BadRequest(f"malformed request, not JSON ({exc}): {_quote(raw)}") from None
    if not isinstance(data, dict):
        raise _BadRequest(f"malformed request: expected a JSON object like "
                          f'{{"cmd": "status"}}, got {type(data).__name__}')
    cmd = data.get("cmd")
    if not isinstance(cmd, str):
        raise _BadRequest('malformed request: "cmd" must be a string, e.g. {"cmd": "status"}')
    return data


def _quote(raw: bytes, limit: int = 80) -> str:
    text = raw[:limit].decode("utf-8", errors="replace")
    return repr(text) + ("..." if len(raw) > limit else "")


# --------------------------------------------------------------------------------------------
# Answers (pure: snapshot in, plain JSON-able data out)
# --------------------------------------------------------------------------------------------


def describe_snapshot(
    snap: Optional[Snapshot],
    now: float,
    manual: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The ``status`` answer: the last cycle (``CycleResult.to_dict``) plus what surrounds it.

    ``manual`` is the persisted manual mode when it could be read (it changes the moment an
    operator runs manual-mode-enable, before the next cycle republishes the snapshot); otherwise
    the snapshot's.
    """
    if snap is None:
        return {"ok": True, "now": now, "last": None, "starting": True}
    last = snap.last
    ended = last.started + last.duration if last else None
    c = snap.counters
    if manual is None:
        m = snap.manual
        manual = {
            "enabled": m.enabled,
            "requested": m.requested.value if m.requested else None,
            "since": m.since,
            "problem": None,
        }
    return {
        "ok": True,
        "now": now,
        "version": snap.version,
        "hostname": snap.hostname,
        "drbd_version": snap.drbd_version,
        "started": snap.started,
        "uptime": max(0.0, now - snap.started),
        "interval": snap.interval,
        "manual": manual,
        "last": last.to_dict() if last else None,
        "last_cycle_ended": ended,
        "last_cycle_age": max(0.0, now - ended) if ended is not None else None,
        "xenapi_reachable": snap.xenapi_reachable,
        "counters": {
            "cycles": dict(c.cycles),
            "actions": [
                {"action": action, "result": result, "count": n}
                for (action, result), n in sorted(c.actions.items())
            ],
            "command_timeouts": dict(c.command_timeouts),
            "target_daemon_restarts": c.target_daemon_restarts,
            "cycle_overruns": c.cycle_overruns,
        },
    }


def history_entries(history: Iterable[Tuple[float, str, str]], since: float) -> List[dict]:
    return [{"t": t, "outcome": outcome, "message": message}
            for t, outcome, message in history if t > since]


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class ControlServer:
    """Serves the control socket for a ``Daemon`` (anything with ``.controller``, ``.cfg`` and
    ``.trigger(why)``). ``start()`` raises ControlSocketError when the socket cannot be had."""

    def __init__(
        self,
        path: str,
        daemon: Any,
        allowed_uids: Iterable[int] = (0,),
        *,
        read_timeout: float = READ_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_request: int = MAX_REQUEST,
    ) -> None:
        self.path = os.fspath(path)
        self.daemon = daemon
        self.allowed_uids = frozenset(int(u) for u in allowed_uids)
        self.read_timeout = read_timeout
        self.max_request = max_request
        self.max_connections = max_connections
        self._slots_lock = threading.Lock()
        self._in_use: Dict[int, int] = {}  # uid -> connections being served
        self._refusals: Dict[int, Tuple[float, int]] = {}  # uid -> (last logged, since then)
        self._stopping = threading.Event()
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._identity: Optional[Tuple[int, int]] = None  # (st_dev, st_ino) of our socket file
        self._root_sock: Optional[socket.socket] = None
        self._root_thread: Optional[threading.Thread] = None
        self._root_identity: Optional[Tuple[int, int]] = None

    @property
    def mode(self) -> int:
        others = self.allowed_uids - {0, os.geteuid()}
        return 0o666 if others else 0o600

    # -- lifecycle

    @property
    def root_path(self) -> Optional[str]:
        """The second, root-only socket, served while the main one is 0666 (see below)."""
        return root_socket_path(self.path) if self.mode == 0o666 else None

    def start(self) -> None:
        self._sock, self._identity = self._bind(self.path, self.mode)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, args=(self._sock,),
                                        name="control-socket", daemon=True)
        self._thread.start()
        if self.root_path is not None:
            # Any local user can connect to a 0666 socket, and a connect loop can keep its
            # listen queue full however fast we accept. Root's iscsi-cfg therefore has a socket
            # of its own, 0600, that nobody else can even connect to.
            try:
                self._root_sock, self._root_identity = self._bind(self.root_path, 0o600,
                                                                  private=True)
            except ControlSocketError as exc:
                log.warning("%s; root shares the main socket", exc)
            else:
                self._root_thread = threading.Thread(target=self._serve,
                                                     args=(self._root_sock,),
                                                     name="control-socket-root", daemon=True)
                self._root_thread.start()
        log.info("control socket on %s (mode %o, uids %s)%s", self.path, self.mode,
                 ", ".join(str(u) for u in sorted(self.allowed_uids)),
                 f"; root's own on {self.root_path}" if self._root_sock else "")

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        for sock in (self._sock, self._root_sock):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() on Linux
                except OSError:
                    pass
        for thread in (self._thread, self._root_thread):
            if thread is not None:
                thread.join(timeout)
        for sock in (self._sock, self._root_sock):
            if sock is not None:
                sock.close()
        self._sock = self._root_sock = None
        self._remove_own_file(self.path, self._identity)
        self._identity = None
        if self._root_identity is not None:
            self._remove_own_file(root_socket_path(self.path), self._root_identity)
            self._root_identity = None

    def _bind(self, path: str, mode: int,
              private: bool = False) -> Tuple[socket.socket, Tuple[int, int]]:
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise ControlSocketError(f"control socket path {path!r} is longer than "
                                     f"{UNIX_PATH_MAX} bytes, the limit of a Unix socket")
        parent = os.path.dirname(path) or "."
        if not os.path.isdir(parent):
            os.makedirs(parent, exist_ok=True)
            os.chmod(parent, 0o755)  # makedirs' mode is masked by the umask
        try:
            st: Optional[os.stat_result] = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise ControlSocketError(f"{path} exists and is not a socket; not touching it "
                                         "(remove it, or set paths.control_socket)")
            # The root socket is checked through the main one, which we hold by now.
            if not private and socket_answers(path):
                raise ControlSocketError(
                    f"{path} answers: another iscsi-ha controller is running on this host; "
                    "not starting a second one (stop it first: systemctl stop iscsi-ha)")
            log.info("replacing stale control socket %s (nothing answers on it)", path)

        # Bound under a temporary name, given its mode, then renamed over the final name.
        tmp = os.path.join(parent, f".ctl.{os.getpid()}.{os.urandom(3).hex()}")
        if len(os.fsencode(tmp)) > UNIX_PATH_MAX:
            tmp = path  # no room for a temporary name: bind in place (brief window, same dir)
            if st is not None:
                os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if tmp != path:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
            sock.bind(tmp)
            os.chmod(tmp, mode)
            sock.listen(BACKLOG)  # before the rename: no refused window
            if tmp != path:
                os.rename(tmp, path)
            sock.settimeout(0.25)  # the accept loop looks at the stop flag this often
            st = os.lstat(path)
        except OSError as exc:
            sock.close()
            if tmp != path:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            raise ControlSocketError(f"cannot create control socket {path}: "
                                     f"{exc.strerror or exc}") from None
        return sock, (st.st_dev, st.st_ino)

    @staticmethod
    def _remove_own_file(path: str, identity: Optional[Tuple[int, int]]) -> None:
        """Remove the socket file, unless another process has put its own there meanwhile."""
        try:
            st = os.lstat(path)
        except OSError:
            return
        if identity == (st.st_dev, st.st_ino):
            try:
                os.unlink(path)
            except OSError:
                pass

    # -- accepting

    def _serve(self, sock: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = sock.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    break
                log.error("control socket: accept failed: %s", exc)
                self._stopping.wait(0.1)  # EMFILE and friends: do not spin
                continue
            try:
                pid, uid, _ = peer_credentials(conn)
            except OSError as exc:
                self._send_and_close(conn, error_answer(f"cannot identify the client: {exc}"))
                continue
            if uid not in self.allowed_uids:
                self._refuse(conn, pid, uid)
                continue
            if not self._take_slot(uid):
                self._send_and_close(conn, error_answer(
                    f"busy: {self.max_connections} requests are being served; try again",
                    CODE_REFUSED))
                continue
            try:
                threading.Thread(target=self._handle_slot, args=(conn, uid), daemon=True,
                                 name="control-conn").start()
            except RuntimeError:  # cannot start a thread: answer nothing, keep serving
                self._give_slot(uid)
                conn.close()

    def _privileged(self, uid: int) -> bool:
        return uid in (0, os.geteuid())

    def _take_slot(self, uid: int) -> bool:
        with self._slots_lock:
            if sum(self._in_use.values()) >= self.max_connections:
                return False
            if not self._privileged(uid):
                others = sum(n for u, n in self._in_use.items() if not self._privileged(u))
                reserved = max(1, self.max_connections // 4)
                if (others >= self.max_connections - reserved
                        or self._in_use.get(uid, 0) >= PER_UID_SLOTS):
                    return False
            self._in_use[uid] = self._in_use.get(uid, 0) + 1
            return True

    def _give_slot(self, uid: int) -> None:
        with self._slots_lock:
            left = self._in_use.get(uid, 0) - 1
            if left > 0:
                self._in_use[uid] = left
            else:
                self._in_use.pop(uid, None)

    def _refuse(self, conn: socket.socket, pid: int, uid: int) -> None:
        """Answer a uid that may not use the socket, from the accept loop, without waiting."""
        now = time.monotonic()
        last, quiet = self._refusals.get(uid, (-REFUSAL_LOG_PERIOD, 0))
        if now - last >= REFUSAL_LOG_PERIOD:
            more = f"; {quiet} more refused in the last {now - last:.0f}s" if quiet else ""
            log.warning("control socket: refused uid %d (pid %d)%s", uid, pid, more)
            self._refusals[uid] = (now, 0)
        else:
            self._refusals[uid] = (last, quiet + 1)
        if len(self._refusals) > 1024:  # bounded, whatever the number of local uids
            self._refusals.clear()
        self._send_and_close(conn, self._denied(uid), wait=0.0)

    def _denied(self, uid: int) -> Dict[str, Any]:
        allowed = ", ".join(str(u) for u in sorted(self.allowed_uids))
        return error_answer(
            f"permission denied: uid {uid} may not use the iscsi-ha control socket "
            f"(allowed uids: {allowed}); run iscsi-cfg as root")

    def _handle_slot(self, conn: socket.socket, uid: int) -> None:
        try:
            self.handle(conn)
        except Exception:  # a handler bug must not leak a slot or reach the accept loop
            log.exception("control socket: handler failed")
        finally:
            self._give_slot(uid)
            conn.close()

    def _send_and_close(self, conn: socket.socket, answer: Dict[str, Any],
                        wait: float = 0.5) -> None:
        try:
            # A short answer fits the socket buffer; a client that does not read gets nothing
            # more from the accept loop than that.
            conn.settimeout(wait)
            conn.sendall(_encode(answer))
        except OSError:
            pass
        finally:
            conn.close()

    # -- one connection

    def handle(self, conn: socket.socket) -> None:
        try:
            pid, uid, _ = peer_credentials(conn)
        except OSError as exc:
            self._send(conn, error_answer(f"cannot identify the client: {exc}"))
            return
        if uid not in self.allowed_uids:  # the accept loop refuses them; this is for direct use
            log.warning("control socket: refused uid %d (pid %d)", uid, pid)
            self._send(conn, self._denied(uid))
            return
        try:
            request = parse_request(self._read_request(conn))
        except _Probe:
            return  # connected and closed without a word: someone checking that we are alive
        except _BadRequest as exc:
            log.info("control socket: bad request from pid %d: %s", pid, exc)
            self._send(conn, error_answer(str(exc)))
            if exc.drain:
                self._drain(conn)
            return
        self._send(conn, self.dispatch(request, pid, uid))

    def _read_request(self, conn: socket.socket) -> bytes:
        deadline = time.monotonic() + self.read_timeout
        buf = bytearray()
        while True:
            newline = buf.find(b"\n")
            if newline >= 0:
                if newline > self.max_request:
                    break
                return bytes(buf[:newline])
            if len(buf) > self.max_request:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _BadRequest(f"timeout: no complete request within {self.read_timeout:g}s")
            conn.settimeout(remaining)
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                raise _BadRequest(
                    f"timeout: no complete request within {self.read_timeout:g}s") from None
            except OSError as exc:
                raise _BadRequest(f"cannot read the request: {exc}") from None
            if not chunk:  # EOF ends a request as well as a newline does
                if not buf:
                    raise _Probe()
                if not buf.strip():
                    raise _BadRequest("empty request")
                return bytes(buf)
            buf += chunk
        raise _BadRequest(f"request too large (limit {self.max_request} bytes)", drain=True)

    def _drain(self, conn: socket.socket) -> None:
        """Read and drop what an oversize client is still sending (bounded), so that it is not
        cut off mid-send and can read our error answer."""
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

    def _send(self, conn: socket.socket, answer: Dict[str, Any]) -> None:
        try:
            conn.settimeout(WRITE_TIMEOUT)
            conn.sendall(_encode(answer))
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, None):
                log.info("control socket: cannot answer: %s", exc)

    # -- requests

    def dispatch(self, request: Dict[str, Any], pid: int = 0, uid: int = 0) -> Dict[str, Any]:
        cmd = request["cmd"]
        command = Command.parse(cmd)
        try:
            if command is Command.STATUS:
                return self.status()
            if command is Command.GET:
                return {"ok": True, "config": self.daemon.cfg.to_dict(redact=True),
                        "config_path": getattr(self.daemon, "config_path", None)}
            if command is Command.LOG:
                since = request.get("since", 0)
                if isinstance(since, bool) or not isinstance(since, (int, float)):
                    return error_answer('"since" must be a unix time (a number)')
                return {"ok": True, "now": time.time(),
                        "entries": history_entries(_copy(self.daemon.controller.history), since)}
            if command is Command.STALE_INFO:
                name = request.get("resource")
                try:
                    return {"ok": True, **self.daemon.controller.stale_report(str(name))}
                except KeyError:
                    return error_answer(f"{_quote(str(name).encode(), 40)} is not a resource "
                                        "of this controller")
            if command in ROLE_COMMANDS:
                accept = request.get("accept_stale") or []
                only_promotion = command is not Command.BECOME_PRIMARY and accept
                if only_promotion or not isinstance(accept, list) or \
                        not all(isinstance(a, str) for a in accept):
                    return error_answer('"accept_stale" is a list of resource names, for '
                                        "become-primary only")
                who = str(request.get("who") or "")[:80]
                return self.role_command(command, pid, uid, tuple(accept), who)
        except Exception as exc:
            log.exception("control socket: %s failed", cmd)
            return error_answer(f"{cmd} failed inside the controller: {type(exc).__name__}: "
                                f"{exc}", CODE_REFUSED)
        shown = _quote(cmd.encode("utf-8", "backslashreplace"), 40)  # JSON allows lone surrogates
        return error_answer(f"unknown command {shown}; "
                            f"known: {', '.join(COMMANDS)}")

    def status(self) -> Dict[str, Any]:
        controller = self.daemon.controller
        manual: Optional[Dict[str, Any]] = None
        store = getattr(controller, "manual_store", None)
        if store is not None:
            try:
                mode, problem = store.load()
                manual = {
                    "enabled": mode.enabled,
                    "requested": mode.requested.value if mode.requested else None,
                    "since": mode.since,
                    "problem": problem,
                }
            except Exception:  # shown from the snapshot instead
                log.exception("cannot read the manual-mode file")
        return describe_snapshot(controller.snapshot(), time.time(), manual)

    def role_command(self, cmd: str, pid: int, uid: int, accept_stale: Tuple[str, ...] = (),
                     who: str = "") -> Dict[str, Any]:
        # The uid comes from SO_PEERCRED (the kernel's word); `who` is what the client says.
        by = f"uid {uid}, pid {pid}" + (f", {who}" if who else "")
        if accept_stale:
            log.warning("operator command %s --accept-stale %s (%s)", cmd,
                        ", ".join(accept_stale), by)
            code, message = self.daemon.controller.command(cmd, accept_stale=accept_stale,
                                                           who=by)
            log.log(logging.INFO if code == 0 else logging.WARNING, "%s: %s", cmd, message)
            self._trigger(cmd)
            return {"ok": code == 0, "code": code, "message": message}
        log.info("operator command %s (%s)", cmd, by)
        code, message = self.daemon.controller.command(cmd)
        log.log(logging.INFO if code == 0 else logging.WARNING, "%s: %s", cmd, message)
        self._trigger(cmd)
        return {"ok": code == 0, "code": code, "message": message}

    def _trigger(self, cmd: str) -> None:
        try:
            # The normal loop follows up at once (and republishes the snapshot).
            self.daemon.trigger(f"operator ran {cmd}")
        except Exception:
            log.exception("cannot trigger a cycle after %s", cmd)


def _copy(history: Iterable[Tuple[float, str, str]]) -> List[Tuple[float, str, str]]:
    # list(deque) runs in C under the GIL, but retry anyway if a cycle appended meanwhile.
    for _ in range(5):
        try:
            return list(history)
        except RuntimeError:
            continue
    return []


def _encode(answer: Dict[str, Any]) -> bytes:
    return (json.dumps(answer, sort_keys=True, default=str) + "\n").encode("utf-8")


def root_socket_path(path: str) -> str:
    """Where root's own socket is, next to ``path`` (``control.sock`` -> ``control.sock.root``)."""
    return path + ".root"


def socket_answers(path: str, timeout: float = 1.0) -> bool:
    """True when something accepts connections on the Unix socket ``path``.

    A connect that times out (a listener whose backlog is full) counts as an answer: a busy
    controller is still a running controller.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
        return True
    except socket.timeout:
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        # EACCES and friends: we cannot tell, so do not steal it.
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()
