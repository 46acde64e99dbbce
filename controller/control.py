"""The control socket: how ``iscsi-cfg`` talks to the running controller.

A Unix stream socket (``paths.control_socket``, default ``/run/iscsi-ha/control.sock``) served by
one accept thread plus one short-lived thread per connection (at most ``max_connections`` at a
time; one more is told "busy" and closed). The protocol is one JSON object per connection, one
line each way::

    -> {"cmd": "status"}
    <- {"ok": true, "hostname": "xcp-host1", "manual": {...}, "last": {...}, ...}

    -> {"cmd": "become-primary"}
    <- {"ok": false, "code": 1, "message": "refused: the peer is Primary for iscsi1; ..."}

Three parts, one module each: this one owns the socket (binding it, the accept loop, who may
use it and how many connections each uid may hold: ``Slots``); ``control_wire.py`` the framing
(reading one bounded request, writing one answer); ``control_requests.py`` what the requests
(``commands.Command``) do. ``code`` in an answer is the exit code ``iscsi-cfg`` should use: 0
done, 1 refused for safety, 2 a bad request.

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
import logging
import os
import socket
import stat
import threading
import time
from typing import Any, Dict, Iterable, Optional, Tuple

from . import control_wire as wire
from .control_requests import (  # noqa: F401 - the names callers know from here
    COMMANDS,
    ControlledDaemon,
    OperatorControls,
    Requests,
    describe_snapshot,
    history_entries,
)
from .control_wire import (  # noqa: F401 - the names callers know from here
    CODE_BAD_REQUEST,
    CODE_OK,
    CODE_REFUSED,
    MAX_REQUEST,
    READ_TIMEOUT,
    error_answer,
    parse_request,
    peer_credentials,
)
from .control_wire import BadRequest as _BadRequest  # noqa: F401 - tests feed it
from .control_wire import Probe as _Probe

log = logging.getLogger("iscsi_ha.control")

MAX_CONNECTIONS = 16
PER_UID_SLOTS = 4  # connections at once for each allowed uid other than root
REFUSAL_LOG_PERIOD = 60.0  # seconds between two log lines about one refused uid
BACKLOG = 128  # connects that wait for the accept loop (it drains them in microseconds each)
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the final NUL


class ControlSocketError(OSError):
    """The control socket cannot be set up (another controller owns it, the path is unusable)."""


# --------------------------------------------------------------------------------------------
# Who may hold a connection
# --------------------------------------------------------------------------------------------


class Slots:
    """Connections being served, counted per uid, so that root is never crowded out: root (and
    the controller's own uid) may use all ``total``, every other uid at most ``PER_UID_SLOTS``,
    and all of those together leave a quarter free for root."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._lock = threading.Lock()
        self._in_use: Dict[int, int] = {}  # uid -> connections being served

    @staticmethod
    def privileged(uid: int) -> bool:
        return uid in (0, os.geteuid())

    def take(self, uid: int) -> bool:
        with self._lock:
            if sum(self._in_use.values()) >= self.total:
                return False
            if not self.privileged(uid):
                others = sum(n for u, n in self._in_use.items() if not self.privileged(u))
                reserved = max(1, self.total // 4)
                if others >= self.total - reserved or self._in_use.get(uid, 0) >= PER_UID_SLOTS:
                    return False
            self._in_use[uid] = self._in_use.get(uid, 0) + 1
            return True

    def give(self, uid: int) -> None:
        with self._lock:
            left = self._in_use.get(uid, 0) - 1
            if left > 0:
                self._in_use[uid] = left
            else:
                self._in_use.pop(uid, None)


class RefusalLog:
    """Logs a refused uid at most once per ``REFUSAL_LOG_PERIOD``, counting the quiet ones."""

    def __init__(self) -> None:
        self._last: Dict[int, Tuple[float, int]] = {}  # uid -> (last logged, refused since)

    def refused(self, pid: int, uid: int) -> None:
        now = time.monotonic()
        last, quiet = self._last.get(uid, (-REFUSAL_LOG_PERIOD, 0))
        if now - last >= REFUSAL_LOG_PERIOD:
            more = f"; {quiet} more refused in the last {now - last:.0f}s" if quiet else ""
            log.warning("control socket: refused uid %d (pid %d)%s", uid, pid, more)
            self._last[uid] = (now, 0)
        else:
            self._last[uid] = (last, quiet + 1)
        if len(self._last) > 1024:  # bounded, whatever the number of local uids
            self._last.clear()


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class ControlServer:
    """Serves the control socket for a daemon (``ControlledDaemon``). ``start()`` raises
    ControlSocketError when the socket cannot be had."""

    def __init__(
        self,
        path: str,
        daemon: ControlledDaemon,
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
        self.slots = Slots(max_connections)
        self.requests = Requests(daemon, Slots.privileged)
        self._refusals = RefusalLog()
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
        self._thread = threading.Thread(
            target=self._serve, args=(self._sock,), name="control-socket", daemon=True
        )
        self._thread.start()
        if self.root_path is not None:
            # Any local user can connect to a 0666 socket, and a connect loop can keep its
            # listen queue full however fast we accept. Root's iscsi-cfg therefore has a socket
            # of its own, 0600, that nobody else can even connect to.
            try:
                self._root_sock, self._root_identity = self._bind(
                    self.root_path, 0o600, private=True
                )
            except ControlSocketError as exc:
                log.warning("%s; root shares the main socket", exc)
            else:
                self._root_thread = threading.Thread(
                    target=self._serve,
                    args=(self._root_sock,),
                    name="control-socket-root",
                    daemon=True,
                )
                self._root_thread.start()
        log.info(
            "control socket on %s (mode %o, uids %s)%s",
            self.path,
            self.mode,
            ", ".join(str(u) for u in sorted(self.allowed_uids)),
            f"; root's own on {self.root_path}" if self._root_sock else "",
        )

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

    def _bind(
        self, path: str, mode: int, private: bool = False
    ) -> Tuple[socket.socket, Tuple[int, int]]:
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise ControlSocketError(
                f"control socket path {path!r} is longer than "
                f"{UNIX_PATH_MAX} bytes, the limit of a Unix socket"
            )
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
                raise ControlSocketError(
                    f"{path} exists and is not a socket; not touching it "
                    "(remove it, or set paths.control_socket)"
                )
            # The root socket is checked through the main one, which we hold by now.
            if not private and socket_answers(path):
                raise ControlSocketError(
                    f"{path} answers: another iscsi-ha controller is running on this host; "
                    "not starting a second one (stop it first: systemctl stop iscsi-ha)"
                )
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
            raise ControlSocketError(
                f"cannot create control socket {path}: {exc.strerror or exc}"
            ) from None
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
                wire.send_and_close(conn, error_answer(f"cannot identify the client: {exc}"))
                continue
            if uid not in self.allowed_uids:
                self._refuse(conn, pid, uid)
                continue
            if not self.slots.take(uid):
                wire.send_and_close(
                    conn,
                    error_answer(
                        f"busy: {self.max_connections} requests are being served; try again",
                        CODE_REFUSED,
                    ),
                )
                continue
            try:
                threading.Thread(
                    target=self._handle_slot, args=(conn, uid), daemon=True, name="control-conn"
                ).start()
            except RuntimeError:  # cannot start a thread: answer nothing, keep serving
                self.slots.give(uid)
                conn.close()

    def _refuse(self, conn: socket.socket, pid: int, uid: int) -> None:
        """Answer a uid that may not use the socket, from the accept loop, without waiting."""
        self._refusals.refused(pid, uid)
        wire.send_and_close(conn, self._denied(uid), wait=0.0)

    def _denied(self, uid: int) -> Dict[str, Any]:
        allowed = ", ".join(str(u) for u in sorted(self.allowed_uids))
        return error_answer(
            f"permission denied: uid {uid} may not use the iscsi-ha control socket "
            f"(allowed uids: {allowed}); run iscsi-cfg as root"
        )

    def _handle_slot(self, conn: socket.socket, uid: int) -> None:
        try:
            self.handle(conn)
        except Exception:  # a handler bug must not leak a slot or reach the accept loop
            log.exception("control socket: handler failed")
        finally:
            self.slots.give(uid)
            conn.close()

    # -- one connection

    def handle(self, conn: socket.socket) -> None:
        try:
            pid, uid, _ = peer_credentials(conn)
        except OSError as exc:
            wire.send(conn, error_answer(f"cannot identify the client: {exc}"))
            return
        if uid not in self.allowed_uids:  # the accept loop refuses them; this is for direct use
            log.warning("control socket: refused uid %d (pid %d)", uid, pid)
            wire.send(conn, self._denied(uid))
            return
        try:
            request = parse_request(wire.read_request(conn, self.read_timeout, self.max_request))
        except _Probe:
            return  # connected and closed without a word: someone checking that we are alive
        except _BadRequest as exc:
            log.info("control socket: bad request from pid %d: %s", pid, exc)
            wire.send(conn, error_answer(str(exc)))
            if exc.drain:
                wire.drain(conn)
            return
        wire.send(conn, self.dispatch(request, pid, uid))

    def dispatch(self, request: Dict[str, Any], pid: int = 0, uid: int = 0) -> Dict[str, Any]:
        """The answer to one parsed request (``control_requests.Requests``)."""
        return self.requests.dispatch(request, pid, uid)


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
