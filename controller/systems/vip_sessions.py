"""This host's own iSCSI connections to the VIP, ended the moment the VIP is served again.

A pool host is itself an initiator of the SR (XenServer's PBD on that host), connected to the VIP
like every other host. When the VIP moves, that connection is left hanging on both ends of the
move, and only TCP's retransmission timer (exponential backoff) or open-iscsi's NOP-Out timer
(``noop_out_interval`` + ``noop_out_timeout``, 5 + 5 s as XenServer ships it) ends it:

* On the **old holder** the connection went to a local address. Once the VIP is removed, the
  initiator may not hear of it: in the VM lab (tests/test_vm_initiator.py, tuned failover
  node2 -> node1) iscsid reported "A NOP has timed out", then "connect to 10.98.0.3:3260 failed
  (No route to host)" and a recovery after 2 attempts: 16.48 s of stall for a 14.35 s move
  (6.25 s for 2.59 s in a CI run). Its own retransmissions reach the new holder, which answers
  with a reset, only when one falls after the new holder has bound the VIP. (The target's own
  close never reaches it: the VIP is removed before the target stops, and no packet leaves from
  an address the host no longer has; the FIN waits in FIN-WAIT-1.)
* On the **new holder** the connection went to the old holder; once the VIP is local, this
  host's next retransmission is answered with a reset by its own stack, again only after the
  backoff.

So this host ends them itself (``ss -K``, SOCK_DESTROY: kernel option
``CONFIG_INET_DIAG_DESTROY``, =y in Debian 12's and XCP-ng 8's dom0 kernel configs, plus the
``tcp_diag`` module) exactly when a reconnect will find the target serving: on the new holder
right after the VIP is bound (the target serves before the VIP is bound); on the old holder once
a TCP connect to ``VIP:port`` from here succeeds (the new holder has bound the VIP), polled by a
thread bounded by ``wait``. open-iscsi sees the connection fail at once and reconnects after
DefaultTime2Wait. Ending them on the old holder before the new holder serves would make that
reconnect fail and cost open-iscsi's 3 s reopen delay (``ISCSI_CONN_ERR_REOPEN_DELAY``).

Only the established connections that predate the move are ended (matched by their local port):
a reconnect made or under way meanwhile is left alone. On the old holder they are the ones listed
right after the release (nothing can reconnect while nobody serves the VIP). On the new holder a
list taken "right after the bind" is not enough: the connection's own retransmission, answered
with a reset by this host's stack once the VIP is local, may have reconnected it before the
watcher's ``ss`` runs (VM lab, under TCG: the list came 0.77 s after the bind, the reconnect
0.2 s after it, and ending that fresh connection cost a second recovery; ended mid-login, a failed
attempt and 3 s more). So there the predating ones are told by what this host holds: a
connection to the now-local VIP whose target side is not here was made while the VIP was
elsewhere. Nothing runs when there is none (a host that is not an initiator of its own SR).

``ss -tnH FILTER`` prints ``STATE RECV-Q SEND-Q LOCAL:PORT PEER:PORT`` (no state column when a
single ``state`` is asked for, so none is); ``ss -K`` prints the sockets it ended, and nothing for
a socket the kernel could not end: the watcher reads again to tell.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from .runner import Runner

log = logging.getLogger(__name__)

POLL = 0.02  # seconds between two connects while the VIP is served nowhere
CONNECT_TIMEOUT = 0.25  # one connect; a SYN into a VIP nobody holds is simply not answered
SS_TIMEOUT = 5.0
HUNG = ("ESTAB", "CLOSE-WAIT")  # ss's names of the states a connection can hang in


@dataclass(frozen=True)
class Connection:
    local: str  # "10.10.10.1:51234"
    peer: str  # "10.10.10.3:3260"
    state: str = ""


class SsParseError(ValueError):
    pass


def parse_ss(text: str) -> Tuple[Connection, ...]:
    """The connections of ``ss -tnH`` (or ``ss -K -tnH``) output; raises SsParseError on a line
    that is not ``STATE RECV-Q SEND-Q LOCAL PEER [...]`` (indented detail lines, as ``-i`` adds,
    are skipped). A dual-stack socket's IPv4 ends are given as IPv4 (``_ipv4``)."""
    out: List[Connection] = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or line[:1].isspace():
            continue
        if len(fields) < 5 or not fields[1].isdigit() or not fields[2].isdigit():
            raise SsParseError(f"unexpected ss line: {line.strip()!r}")
        local, peer = fields[3], fields[4]
        if ":" not in local or ":" not in peer:
            raise SsParseError(f"unexpected ss line: {line.strip()!r}")
        out.append(Connection(_ipv4(local), _ipv4(peer), fields[0]))
    return tuple(out)


def unanswered(conns: Sequence[Connection], address: str, port: int) -> Tuple[Connection, ...]:
    """The connections to ``address:port`` that no socket of ``conns`` answers: with the address
    local, their target side is on another host (they predate the address moving here)."""
    here = f"{address}:{port}"
    answered = {c.peer for c in conns if c.local == here}
    return tuple(c for c in conns if c.peer == here and c.local != here and c.local not in answered)


def _ipv4(endpoint: str) -> str:
    """``[::ffff:10.98.0.3]:3260`` (how ss prints a dual-stack socket's IPv4 end) as
    ``10.98.0.3:3260``; any other endpoint as it is."""
    host, _, port = endpoint.rpartition(":")
    if host.startswith("[::ffff:") and host.endswith("]"):
        return f"{host[len('[::ffff:') : -1]}:{port}"
    return endpoint


def tcp_answers(address: str, port: int, timeout: float = CONNECT_TIMEOUT) -> bool:
    """Does anything accept a TCP connection at ``address:port`` (from this host)?"""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


class VipSessions:
    """Ends this host's connections to ``VIP:port`` that predate a move of the VIP."""

    def __init__(
        self,
        runner: Runner,
        address: str,
        port: int = 3260,
        ss: str = "ss",
        wait: float = 30.0,
        served: Optional[Callable[[], bool]] = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        start: Optional[Callable[[Callable[[], None]], None]] = None,
    ) -> None:
        self.runner = runner
        self.address = address
        self.port = int(port)
        self.ss = ss
        self.wait = float(wait)
        self.served = served or (lambda: tcp_answers(self.address, self.port))
        self.clock = clock
        self.sleep = sleep
        self.start = start or _thread
        self._busy = threading.Lock()
        self._warned = False

    def _filter(self, conns: Sequence[Connection] = ()) -> List[str]:
        # This host's connections to the VIP's iSCSI port; the target's side of a local one
        # (sport 3260, dst this host's own address) is not matched.
        expr = ["dst", self.address, "dport", "=", f":{self.port}"]
        if conns:
            ports: List[str] = []
            for c in conns:
                ports += ["or"] * bool(ports) + ["sport", "=", ":" + c.local.rsplit(":", 1)[1]]
            expr += ["and", "(", *ports, ")"]
        return expr

    def _ss(self, *args: str) -> Optional[Tuple[Connection, ...]]:
        res = self.runner.run([self.ss, *args], timeout=SS_TIMEOUT)
        if not res.ok:
            self._warn(f"cannot list this host's connections to the VIP: {res.describe_failure()}")
            return None
        try:
            return parse_ss(res.stdout)
        except SsParseError as exc:
            self._warn(f"cannot read {res.command}: {exc}")
            return None

    def find(self) -> Tuple[Connection, ...]:
        """This host's connections to ``VIP:port`` (none when ss failed: it warns once)."""
        return self._ss("-tnH", *self._filter()) or ()

    def find_unanswered(self) -> Tuple[Connection, ...]:
        """This host's connections to ``VIP:port`` with no target side here (``unanswered``)."""
        target_side = ["src", self.address, "and", "sport", "=", f":{self.port}"]
        sides = ["(", *self._filter(), ")", "or", "(", *target_side, ")"]
        return unanswered(self._ss("-tnH", *sides) or (), self.address, self.port)

    def end(self, conns: Sequence[Connection]) -> Tuple[int, int]:
        """End these connections now: (ended, still there afterwards)."""
        if not conns:
            return 0, 0
        ended = self._ss("-K", "-tnH", *self._filter(conns)) or ()
        left = self._ss("-tnH", *self._filter(conns)) or ()
        if left:
            self._warn(
                f"{len(left)} connection(s) to {self.address}:{self.port} could not be ended "
                "(ss -K needs a kernel with CONFIG_INET_DIAG_DESTROY and the tcp_diag module): "
                "TCP's retransmissions or open-iscsi's NOP-Out timer will end them"
            )
        return len(ended), len(left)

    def after_bind(self) -> None:
        """Called once the VIP is bound here (the target serves already); returns at once."""
        self._begin("bound", self.find_unanswered, self._end_now)

    def after_release(self) -> None:
        """Called once the VIP is removed from here; returns at once."""
        self._begin("released", self.find, self._end_when_served)

    def _begin(
        self,
        event: str,
        find: Callable[[], Tuple[Connection, ...]],
        then: Callable[[Tuple[Connection, ...], float], None],
    ) -> None:
        if self.wait <= 0 or not self._busy.acquire(blocking=False):
            return  # off, or a watcher runs (a move back while waiting: it ends them too)
        since = self.clock()

        def run() -> None:  # on a thread: even listing them (a process) stays off the move's path
            try:
                # Established ones only (and those the target already closed): a connect still
                # under way (SYN-SENT) is a reconnect that will reach the target once it serves,
                # and ending it would cost open-iscsi its 3 s reopen delay.
                found = tuple(c for c in find() if c.state in HUNG)
                if found:
                    log.info(
                        "VIP %s %s: %d iSCSI connection(s) of this host to it predate the move",
                        self.address,
                        event,
                        len(found),
                    )
                    then(found, since)
            except Exception:  # a thread of its own: log, never raise
                log.exception("ending this host's connections to the VIP failed")
            finally:
                self._busy.release()

        try:
            self.start(run)
        except Exception:  # no thread (resources): the NOP-Out timer ends them, as before
            log.exception("cannot start the watcher of this host's connections to the VIP")
            self._busy.release()

    def _end_now(self, found: Tuple[Connection, ...], since: float) -> None:
        ended, _ = self.end(found)
        log.info(
            "ended %d connection(s) of this host to the VIP %s, %.3f s after binding it: the "
            "initiator reconnects to the target here",
            ended,
            self.address,
            self.clock() - since,
        )

    def _end_when_served(self, found: Tuple[Connection, ...], since: float) -> None:
        served = False
        while self.clock() - since < self.wait:
            if self.served():
                served = True
                break
            self.sleep(POLL)
        ended, _ = self.end(found)
        log.info(
            "ended %d connection(s) of this host to the VIP %s, %.3f s after its release (%s)",
            ended,
            self.address,
            self.clock() - since,
            f"{self.address}:{self.port} answers from here"
            if served
            else f"nobody answered at {self.address}:{self.port} within {self.wait:g} s",
        )

    def _warn(self, message: str) -> None:
        if not self._warned:  # once: a host without ss or SOCK_DESTROY says so once
            log.warning("%s", message)
            self._warned = True
        else:
            log.debug("%s", message)


def _thread(fn: Callable[[], None]) -> None:
    threading.Thread(target=fn, name="vip-sessions", daemon=True).start()
