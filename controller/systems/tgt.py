"""The tgt backend of the target layer (``target.py``): one tgtd per host, driven through
``tgtadm`` on its own control port.

tgtd keeps its whole configuration in memory and ``tgtadm --op show`` prints it as an indented
report (real captures in ``tests/fixtures/tgt/``)::

    Target 1: iqn.2024-01.org.iscsi-ha:storage
        I_T nexus information:          one "I_T nexus: N" block per logged-in session
        LUN information:                LUN 0 is tgt's own controller; ours start at 1
            LUN: 1
                Size: 8 MB, Block size: 512       (decimal MB, rounded)
                Backing store path: /dev/drbd/by-res/iscsi1/0
        ACL information:                one line per bound initiator address or name
            ALL

An empty daemon prints nothing. ``parse_show`` reads what it knows and skips the rest, so a newer
tgt that adds fields still parses; it gives up (with the text quoted) only when a line at the top
level is not a ``Target N: NAME`` header. Initiators choose their own name and alias and tgt
prints both raw (newlines, any bytes): the parser follows tgt's indentation grammar, so that text
is data, never structure (captures of hostile logins: ``tests/fixtures/tgt/hostile-*.txt``).
Residual: an alias that also forges the ``Connection: N`` line that ends it, followed by forged
sections, still reads as structure; the controller then sees a target not serving and rebuilds
it, it never serves twice or from a Secondary.

Identity (``target.py``): ``--params scsi_id=,scsi_sn=,vendor_id=,product_id=`` on
``--op update`` (refused on ``--op new``). Write cache: ``--bsoflags sync`` (O_SYNC; "Backing store
flags: sync" in the show); a LUN without it is re-added. ``DefaultTime2Wait`` is set with
``--mode target --op update --name DefaultTime2Wait --value N`` when the target is created.

The facts the code relies on were measured on tgt 1.0.85:

* no daemon on the control port (no socket, or a stale socket after a crash): ``tgtadm`` exits 107,
  "failed to send request hdr to tgt daemon, Transport endpoint is not connected";
* every refusal is rc 22 with tgt's words: "can't find the target", "this target already exists"
  (also for an IQN already used by another tid), "this logical unit number already exists",
  "this access control rule already exists", "invalid request" (e.g. a missing backing store, or
  ``--mode system --op delete`` while a target exists);
* ``--op delete --force`` closes the sessions, but while a client still has commands in flight it
  answers "this logical unit is still active" for ~0.1 s: the delete is retried, bounded;
* tgtd ignores SIGTERM and SIGINT; ``--mode system --op delete`` makes it exit ~0.1 s later. A
  second tgtd on the same port exits at once ("another tgtd is using ...lock").

Serving is made idempotent by looking first and doing only what is missing: a warm empty daemon
gets the target, LUNs and binding in three ``tgtadm`` calls (about 10 ms).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ..model import LunInfo, StepResult, TargetObservation
from .runner import CommandResult, Runner
from .target import DEFAULT_TIME2WAIT, LunSpec, lun_specs, planned_info, tgt_wwn

log = logging.getLogger(__name__)

OBSERVATION_REUSE = 2.0  # seconds: serve() starts from observe()'s reading this fresh

NOT_RUNNING_RC = 107  # ENOTCONN: nothing listens on /var/run/tgtd/socket.N
READY_TIMEOUT = 3.0  # how long a freshly started tgtd may take to answer (measured: < 50 ms)
POLL = 0.01
BUSY_TIMEOUT = 2.0  # how long a force delete may keep hitting "still active" (measured: ~0.1 s)
KILL_WAIT = 1.0  # after SIGKILL, how long until the process must be gone

_TARGET_RE = re.compile(r"^Target (\d+): (\S+)\s*$")
_SIZE_RE = re.compile(r"^Size: (\d+) MB\b")
# What tgtd prints right after an "Initiator: NAME alias: ALIAS" line: the end of the client's text.
_CONNECTION_RE = re.compile(r"^ {12}Connection: \d+$")
_NEXUS_RE = re.compile(r"^ {8}I_T nexus: (\d+)$")


class TgtParseError(ValueError):
    """``tgtadm --op show`` printed something this parser cannot read."""


@dataclass(frozen=True)
class TgtLun:
    number: int
    path: Optional[str] = None  # None for tgt's controller LUN 0 ("Backing store path: None")
    size_mb: Optional[int] = None  # as tgt prints it: decimal megabytes, rounded
    type: str = ""  # "controller", "disk", ...
    scsi_id: str = ""  # "SCSI ID: IET     00010001" (tgt's default) or ours
    scsi_sn: str = ""
    flags: str = ""  # "Backing store flags: sync"

    @property
    def write_cache(self) -> bool:
        """Without O_SYNC/O_DIRECT tgt writes through the page cache: a WRITE completes before
        DRBD has it."""
        return not ({"sync", "direct"} & set(self.flags.replace(",", " ").split()))


@dataclass(frozen=True)
class TgtTarget:
    tid: int
    name: str
    luns: Tuple[TgtLun, ...] = ()  # as listed, LUN 0 included
    acl: Tuple[str, ...] = ()  # bound initiator addresses (and names)
    sessions: int = 0  # I_T nexuses: logged-in initiators

    def lun(self, number: int) -> Optional[TgtLun]:
        for lun in self.luns:
            if lun.number == number:
                return lun
        return None

    @property
    def data_luns(self) -> Tuple[TgtLun, ...]:
        return tuple(lun for lun in self.luns if lun.number != 0)


@dataclass
class _Building:
    tid: int
    name: str
    luns: List[dict] = field(default_factory=list)
    acl: List[str] = field(default_factory=list)
    nexuses: Set[str] = field(default_factory=set)

    def freeze(self) -> TgtTarget:
        luns = tuple(
            TgtLun(
                d["number"],
                d.get("path"),
                d.get("size_mb"),
                d.get("type", ""),
                d.get("scsi_id", ""),
                d.get("scsi_sn", ""),
                d.get("flags", ""),
            )
            for d in self.luns
        )
        return TgtTarget(self.tid, self.name, luns, tuple(self.acl), len(self.nexuses))


_LUN_KEYS = {
    "Backing store path": "path",
    "Type": "type",
    "SCSI ID": "scsi_id",
    "SCSI SN": "scsi_sn",
    "Backing store flags": "flags",
}


def parse_show(text: str) -> Tuple[TgtTarget, ...]:
    """Targets from ``tgtadm --lld iscsi --mode target --op show``; raises TgtParseError.

    Read by tgt's indentation grammar, never by what a line says alone: an initiator chooses
    its own name and alias at login and tgt prints both raw, newlines included. So everything
    after an ``Initiator:`` line up to the ``Connection: N`` line tgt prints next is the client's
    text, whatever it looks like (a forged ``Target 1:`` header, a LUN, an unknown line), and
    sessions are counted by their ``I_T nexus: N`` lines where the grammar has them.
    """
    targets: List[TgtTarget] = []
    cur: Optional[_Building] = None
    section = ""
    client_text = False  # inside an initiator's name/alias (may span lines)
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if client_text:
            if _CONNECTION_RE.match(line):
                client_text = False
            continue
        line = line.rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        if indent == 0:
            m = _TARGET_RE.match(line)
            if not m:
                raise TgtParseError(f"unexpected line {raw[:200]!r}")
            if cur is not None:
                targets.append(cur.freeze())
            cur = _Building(int(m.group(1)), m.group(2))
            section = ""
            continue
        if cur is None:
            raise TgtParseError(f"line outside any target: {raw[:200]!r}")
        if indent == 4:
            # Section headers ("LUN information:", "ACL information:", ...); unknown ones are
            # remembered too, so their contents are skipped rather than misread.
            section = body.rstrip(":") if body.endswith(":") else ""
            continue
        key, sep, value = body.partition(":")
        value = value.strip()
        if section == "I_T nexus information":
            nexus = _NEXUS_RE.match(line)
            if nexus:
                cur.nexuses.add(nexus.group(1))
            elif indent == 12 and key == "Initiator" and sep:
                client_text = True
        elif section == "LUN information":
            if indent == 8 and key == "LUN" and sep:
                try:
                    cur.luns.append({"number": int(value)})
                except ValueError:
                    raise TgtParseError(f"LUN number not an integer: {raw[:200]!r}") from None
            elif cur.luns and indent == 12:
                lun = cur.luns[-1]
                if key == "Backing store path":
                    lun["path"] = None if value in ("", "None") else value
                elif key in _LUN_KEYS:
                    lun[_LUN_KEYS[key]] = value
                elif key == "Size":
                    m = _SIZE_RE.match(body)
                    lun["size_mb"] = int(m.group(1)) if m else None
        elif section == "ACL information" and indent >= 8:
            cur.acl.append(body)
    if cur is not None:
        targets.append(cur.freeze())
    return tuple(targets)


def find_tgtd_pids(control_port: int, proc_root: str = "/proc") -> Tuple[int, ...]:
    """PIDs of live tgtd processes started with ``-C control_port`` (scans /proc/*/cmdline)."""
    pids = []
    try:
        names = os.listdir(proc_root)
    except OSError:
        return ()
    for name in names:
        if name.isdigit() and _is_our_tgtd(int(name), control_port, proc_root):
            pids.append(int(name))
    return tuple(sorted(pids))


def _cmdline(pid: int, proc_root: str) -> List[str]:
    try:
        with open(os.path.join(proc_root, str(pid), "cmdline"), "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _is_our_tgtd(pid: int, control_port: int, proc_root: str) -> bool:
    argv = _cmdline(pid, proc_root)
    if not argv or os.path.basename(argv[0]) != "tgtd" or not _alive(pid, proc_root):
        return False
    port = "0"  # tgtd's default control port
    for i, arg in enumerate(argv):
        if arg in ("-C", "--control-port") and i + 1 < len(argv):
            port = argv[i + 1]
        elif arg.startswith("--control-port="):
            port = arg.split("=", 1)[1]
        elif arg.startswith("-C") and len(arg) > 2:
            port = arg[2:]
    return port == str(control_port)


def _alive(pid: int, proc_root: str) -> bool:
    """The process exists and is not a zombie (a zombie has exited; only its reaping is due)."""
    try:
        with open(os.path.join(proc_root, str(pid), "stat"), "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return False
    # "pid (comm) S ...": comm may hold spaces and parentheses; the state follows the last ")".
    rest = stat.rpartition(")")[2].split()
    return bool(rest) and rest[0] not in ("Z", "X")


class Target:
    """tgtd on one control port, serving one target (tid + IQN) with its LUNs."""

    # Where to look for processes; tests point it at a fake tree.
    proc_root = "/proc"

    def __init__(
        self,
        runner: Runner,
        tgtadm: str = "tgtadm",
        tgtd: str = "tgtd",
        control_port: int = 0,
        tid: int = 1,
        iqn: str = "iqn.2024-01.org.iscsi-ha:storage",
        luns: Sequence[Any] = ((1, "/dev/drbd/by-res/iscsi1/0"),),
        initiator_address: str = "ALL",
        stop_timeout: float = 5.0,
        log_file: Optional[str] = None,
        timeout: Optional[float] = None,
        default_time2wait: int = DEFAULT_TIME2WAIT,
    ) -> None:
        self.runner = runner
        self.tgtadm = tgtadm
        self.tgtd = tgtd
        self.control_port = int(control_port)
        self.tid = int(tid)
        self.iqn = iqn
        self.specs: Tuple[LunSpec, ...] = lun_specs(iqn, luns)
        self.luns = tuple((spec.number, spec.path) for spec in self.specs)
        self.default_time2wait = int(default_time2wait)
        self.initiator_address = initiator_address
        self.stop_timeout = stop_timeout
        self.log_file = log_file
        self.timeout = timeout
        # What observe() last read, for serve() in the same cycle (see serve()).
        self._seen: Optional[Tuple[float, Tuple[TgtTarget, ...]]] = None
        self.pid: Optional[int] = None  # of the tgtd we started (or found)

    # -- commands ------------------------------------------------------------------------------

    def _adm(self, *args: str) -> CommandResult:
        argv = [self.tgtadm, "-C", str(self.control_port), "--lld", "iscsi", *args]
        return self.runner.run(argv, timeout=self.timeout)

    def _target(self, op: str, *args: str) -> CommandResult:
        return self._adm("--mode", "target", "--op", op, "--tid", str(self.tid), *args)

    def _lu(self, op: str, number: int) -> Tuple[str, ...]:
        return ("--mode", "logicalunit", "--op", op, "--tid", str(self.tid), "--lun", str(number))

    def _show(self) -> CommandResult:
        return self._adm("--mode", "target", "--op", "show")

    @staticmethod
    def _not_running(res: CommandResult) -> bool:
        return not res.timed_out and (
            res.rc == NOT_RUNNING_RC or "failed to send request hdr" in res.stderr
        )

    @staticmethod
    def _says(res: CommandResult, words: str) -> bool:
        return res.rc == 22 and words in (res.stderr + res.stdout)

    def _read(self) -> Tuple[Optional[Tuple[TgtTarget, ...]], Optional[str], CommandResult]:
        """(targets, error, result); targets None when the daemon does not answer."""
        res = self._show()
        if self._not_running(res):
            return None, None, res
        if not res.ok:
            return None, f"cannot read {res.command}: {res.describe_failure()}", res
        try:
            return parse_show(res.stdout), None, res
        except TgtParseError as exc:
            return None, f"cannot read {res.command}: {exc}: {res.stdout.strip()[:400]!r}", res

    def _ours(self, targets: Iterable[TgtTarget]) -> Optional[TgtTarget]:
        for tgt in targets:
            if tgt.tid == self.tid:
                return tgt
        return None

    def _missing(self, tgt: Optional[TgtTarget]) -> List[str]:
        """What keeps ``tgt`` from serving the configuration (empty: it serves)."""
        if tgt is None:
            return [f"target {self.tid} absent"]
        if tgt.name != self.iqn:
            return [f"target {self.tid} is {tgt.name}, not {self.iqn}"]
        out = []
        for spec in self.specs:
            number, path = spec.number, spec.path
            lun = tgt.lun(number)
            if lun is None:
                out.append(f"LUN {number} absent")
            elif lun.path != path:
                out.append(f"LUN {number} backed by {lun.path}, not {path}")
            elif lun.write_cache:
                out.append(f"LUN {number} write cache on (flags {lun.flags!r})")
            elif (lun.scsi_id, lun.scsi_sn) != (spec.scsi_id, spec.serial):
                out.append(
                    f"LUN {number} identity {lun.scsi_id!r}/{lun.scsi_sn!r}, "
                    f"not {spec.scsi_id!r}/{spec.serial!r}"
                )
        if self.initiator_address not in tgt.acl:
            out.append(f"initiator {self.initiator_address} not bound")
        return out

    # -- observe -------------------------------------------------------------------------------

    def observe(self) -> TargetObservation:
        targets, error, _ = self._read()
        self._seen = (time.monotonic(), targets) if targets is not None and not error else None
        if error:
            return TargetObservation(daemon_running=True, error=error)
        planned = planned_info(self.specs, "tgt")
        if targets is None:
            return TargetObservation(daemon_running=False, backend="tgt", lun_info=planned)
        tgt = self._ours(targets)
        if tgt is None:
            return TargetObservation(daemon_running=True, backend="tgt", lun_info=planned)
        return TargetObservation(
            daemon_running=True,
            target_present=True,
            serving=not self._missing(tgt),
            luns=len(tgt.data_luns),
            sessions=tgt.sessions,
            backend="tgt",
            lun_info=tuple(self._info(lun) for lun in tgt.data_luns),
        )

    def _info(self, lun: TgtLun) -> LunInfo:
        # tgt's show has no vendor/product: they are what we set (or tgt's "IET"/"VIRTUAL-DISK").
        spec = next((s for s in self.specs if s.number == lun.number), None)
        ours = spec is not None and lun.scsi_id == spec.scsi_id
        return LunInfo(
            lun.number,
            serial=lun.scsi_sn,
            wwn=tgt_wwn(lun.scsi_id),
            vendor=spec.vendor if ours and spec else "",
            product=spec.product if ours and spec else "",
            write_cache=lun.write_cache,
        )

    # -- daemon --------------------------------------------------------------------------------

    def start_daemon(self) -> StepResult:
        self._seen = None  # what it changes, observe() must read again
        res = self._show()
        if not self._not_running(res):
            if res.ok:
                self._remember_pid()
                return StepResult(True, f"tgtd already running on control port {self.control_port}")
            return StepResult(False, res.describe_failure())
        argv = [self.tgtd, "-f", "-C", str(self.control_port)]
        pid = self.runner.start_daemon(argv, self.log_file)
        if pid is None:
            return StepResult(False, f"cannot start `{' '.join(argv)}`")
        self.pid = pid
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            res = self._show()
            if res.ok:
                return StepResult(
                    True, f"started tgtd (pid {pid}, control port {self.control_port})"
                )
            if not self._not_running(res):
                return StepResult(False, f"tgtd (pid {pid}) started but {res.describe_failure()}")
            if not _alive(pid, self.proc_root):
                self.pid = None
                hint = f" (see {self.log_file})" if self.log_file else ""
                return StepResult(False, f"tgtd (pid {pid}) exited at once{hint}")
            if time.monotonic() >= deadline:
                return StepResult(
                    False, f"tgtd (pid {pid}) does not answer after {READY_TIMEOUT:g}s"
                )
            time.sleep(POLL)

    def _remember_pid(self) -> None:
        if self.pid is None or not _is_our_tgtd(self.pid, self.control_port, self.proc_root):
            pids = find_tgtd_pids(self.control_port, self.proc_root)
            self.pid = pids[0] if len(pids) == 1 else None

    def stop_daemon(self) -> StepResult:
        self._seen = None  # what it changes, observe() must read again
        self._remember_pid()
        pid = self.pid
        notes = []
        res = self._show()
        if self._not_running(res) and pid is None:
            return StepResult(True, f"tgtd not running on control port {self.control_port}")
        if not self._not_running(res):
            stopped = self.stop_serving()
            if not stopped.ok:
                notes.append(stopped.message)
            res = self._adm("--mode", "system", "--op", "delete")
            if not res.ok and not self._not_running(res):
                # Another target still in the daemon, or tgtadm hung: the kill below settles it.
                notes.append(res.describe_failure())
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline:
            if self._gone(pid):
                self.pid = None
                return StepResult(True, "; ".join(["tgtd stopped", *notes]))
            time.sleep(POLL)
        if pid is None:
            return StepResult(
                False,
                "; ".join(
                    [
                        f"tgtd still answers after {self.stop_timeout:g}s and its pid is unknown",
                        *notes,
                    ]
                ),
            )
        log.warning(
            "tgtd (pid %d) still running %.1fs after shutdown: SIGKILL", pid, self.stop_timeout
        )
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except OSError as exc:
            return StepResult(False, f"cannot kill tgtd (pid {pid}): {exc.strerror}")
        deadline = time.monotonic() + KILL_WAIT
        while time.monotonic() < deadline:
            if not _alive(pid, self.proc_root):
                self.pid = None
                return StepResult(
                    True,
                    "; ".join([f"tgtd killed (pid {pid}) after {self.stop_timeout:g}s", *notes]),
                )
            time.sleep(POLL)
        return StepResult(False, f"tgtd (pid {pid}) survives SIGKILL")

    def _gone(self, pid: Optional[int]) -> bool:
        if pid is not None:
            return not _alive(pid, self.proc_root)
        return self._not_running(self._show())

    # -- target --------------------------------------------------------------------------------

    def serve(self) -> StepResult:
        # The cycle that asks for this observed the target a moment ago and decided on that
        # view: start from it instead of another `tgtadm --op show` on the path of the promotion.
        # Should it be out of date, a command below fails and says so, and the check after
        # serve() (execute.py) reads the result anyway.
        seen, self._seen = self._seen, None
        if seen is not None and time.monotonic() - seen[0] < OBSERVATION_REUSE:
            targets: Optional[Tuple[TgtTarget, ...]] = seen[1]
        else:
            targets, error, _ = self._read()
            if error:
                return StepResult(False, error)
        if targets is None:
            return StepResult(False, f"tgtd is not running on control port {self.control_port}")
        tgt = self._ours(targets)
        done: List[str] = []

        if tgt is not None and tgt.name != self.iqn:
            # Our tid under another name (the IQN was reconfigured): rebuild it.
            deleted = self._delete_target()
            if not deleted.ok:
                return StepResult(False, f"target {self.tid} is {tgt.name}: {deleted.message}")
            done.append(f"removed target {self.tid} ({tgt.name})")
            tgt = None
        if tgt is None:
            res = self._target("new", "--targetname", self.iqn)
            if res.ok:
                res = self._set_time2wait()
            if not res.ok:
                other = [t for t in targets if t.name == self.iqn]
                if other:
                    return StepResult(
                        False,
                        f"{self.iqn} already exists as target {other[0].tid}, "
                        f"not {self.tid}: {res.describe_failure()}",
                    )
                return StepResult(False, res.describe_failure())
            done.append(f"created target {self.tid}")
            tgt = TgtTarget(self.tid, self.iqn)

        for spec in self.specs:
            number, path = spec.number, spec.path
            lun = tgt.lun(number)
            if lun is not None and lun.path == path and not lun.write_cache:
                if (lun.scsi_id, lun.scsi_sn) != (spec.scsi_id, spec.serial):
                    res = self._set_identity(spec)
                    if not res.ok:
                        return self._partial(done, f"LUN {number}: {res.describe_failure()}")
                    done.append(f"pinned LUN {number}'s identity")
                continue
            if lun is not None:
                res = self._retry_busy(*self._lu("delete", number))
                if not res.ok and not self._says(res, "can't find the logical unit"):
                    return self._partial(done, res.describe_failure())
                done.append(f"removed LUN {number} ({lun.path})")
            # O_SYNC: tgt otherwise writes through the page cache and acknowledges a WRITE before
            # DRBD has it, so data the initiator never flushed is lost with the Primary (seen in
            # the VM lab: acknowledged blocks read back as zeros after a power cut). With O_SYNC a
            # WRITE completes only once DRBD (protocol C) has it on both disks.
            res = self._adm(*self._lu("new", number), "--backing-store", path, "--bsoflags", "sync")
            if res.ok:
                # tgt takes --params only on update (measured: "option '-P' is not allowed").
                res = self._set_identity(spec)
            if not res.ok:
                return self._partial(done, f"LUN {number} on {path}: {res.describe_failure()}")
            done.append(f"added LUN {number}")

        if self.initiator_address not in tgt.acl:
            res = self._target("bind", "--initiator-address", self.initiator_address)
            if not res.ok and not self._says(res, "already exists"):
                return self._partial(done, res.describe_failure())
            done.append(f"bound {self.initiator_address}")

        what = f"target {self.tid} {self.iqn} serving {len(self.luns)} LUN(s)"
        if not done:
            return StepResult(True, f"{what}: already in place")
        return StepResult(True, f"{what}: " + ", ".join(done))

    def _set_identity(self, spec: LunSpec) -> CommandResult:
        params = (
            f"scsi_id={spec.scsi_id},scsi_sn={spec.serial},"
            f"vendor_id={spec.vendor},product_id={spec.product}"
        )
        return self._adm(*self._lu("update", spec.number), "--params", params)

    def _set_time2wait(self) -> CommandResult:
        # What an initiator waits before reconnecting after a logout or a lost connection.
        return self._target(
            "update", "--name", "DefaultTime2Wait", "--value", str(self.default_time2wait)
        )

    @staticmethod
    def _partial(done: List[str], failure: str) -> StepResult:
        prefix = f"after {', '.join(done)}: " if done else ""
        return StepResult(False, prefix + failure)

    def stop_serving(self) -> StepResult:
        self._seen = None  # what it changes, observe() must read again
        return self._delete_target()

    def _delete_target(self) -> StepResult:
        res = self._retry_busy(
            "--mode", "target", "--op", "delete", "--force", "--tid", str(self.tid)
        )
        if res.ok:
            return StepResult(True, f"target {self.tid} deleted")
        if self._says(res, "can't find the target"):
            return StepResult(True, f"target {self.tid} not present")
        if self._not_running(res):
            return StepResult(True, f"tgtd not running on control port {self.control_port}")
        return StepResult(False, res.describe_failure())

    def _retry_busy(self, *args: str) -> CommandResult:
        """Run a delete, retrying while tgt says a LUN is "still active" (commands in flight)."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            res = self._adm(*args)
            if not self._says(res, "still active") or time.monotonic() >= deadline:
                return res
            time.sleep(POLL)


# -- /etc/tgt/targets.conf (tgt-admin's file), for import-conf --tgt-conf ------------------------

_LUN_PARAMS = ("scsi_id", "scsi_sn", "vendor_id", "product_id", "write-cache", "lun")


@dataclass(frozen=True)
class ConfLun:
    number: int
    path: str
    scsi_id: str
    scsi_sn: str
    vendor_id: str = "IET"  # tgt's defaults, what an initiator saw when nothing was set
    product_id: str = "VIRTUAL-DISK"


@dataclass(frozen=True)
class ConfTarget:
    tid: int
    iqn: str
    luns: Tuple[ConfLun, ...]
    initiator_addresses: Tuple[str, ...] = ()
    params: Tuple[Tuple[str, str], ...] = ()  # target-level keys kept as written
    ignored: Tuple[str, ...] = ()  # keys import-conf does not carry over (e.g. incominguser)


def parse_targets_conf(text: str) -> Tuple[ConfTarget, ...]:
    """The targets of a tgt-admin ``targets.conf`` with each LUN's identity as tgt presents it.

    tgt-admin numbers targets 1, 2, ... in file order and gives a backing store without ``lun``
    the first free number from 1 (explicit numbers first); a key outside ``<backing-store>``
    applies to every LUN of the target unless the LUN sets it. What tgt shows for a LUN whose
    scsi_id / scsi_sn was never set is "IET     TTTTLLLL" (hex) and "beafTL" (decimal): carried
    over as such, so an SR that knows that identity keeps it. Raises TgtParseError naming the
    line for what it cannot read."""
    targets: List[ConfTarget] = []
    cur: Optional[Dict[str, Any]] = None
    block: Optional[Dict[str, Any]] = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        low = line.lower()
        if low.startswith("<target ") and line.endswith(">"):
            if cur is not None:
                raise TgtParseError(f"line {n}: <target> inside <target>")
            cur = {
                "iqn": line[len("<target ") : -1].strip(),
                "stores": [],
                "globals": {},
                "addresses": [],
                "params": [],
                "ignored": [],
                "line": n,
            }
            continue
        if low == "</target>":
            if cur is None or block is not None:
                raise TgtParseError(f"line {n}: unexpected </target>")
            targets.append(_conf_target(len(targets) + 1, cur))
            cur = None
            continue
        if cur is None:
            continue  # default-driver, include, ...: outside any target
        if (
            low.startswith("<backing-store ") or low.startswith("<direct-store ")
        ) and line.endswith(">"):
            block = {"path": line.split(None, 1)[1][:-1].strip(), "params": {}, "line": n}
            continue
        if low in ("</backing-store>", "</direct-store>"):
            if block is None:
                raise TgtParseError(f"line {n}: unexpected {line}")
            cur["stores"].append(block)
            block = None
            continue
        key, _, value = line.partition(" ")
        value = value.strip()
        if block is not None:
            block["params"][key] = value
        elif key in ("backing-store", "direct-store"):
            cur["stores"].append({"path": value, "params": {}, "line": n})
        elif key == "initiator-address":
            cur["addresses"].append(value)
        elif key in _LUN_PARAMS:
            cur["globals"][key] = value
        elif key in ("incominguser", "outgoinguser", "initiator-name"):
            cur["ignored"].append(f"line {n}: {key}")
        else:
            cur["params"].append((key, value))
    if cur is not None:
        raise TgtParseError(f"line {cur['line']}: <target {cur['iqn']}> is not closed")
    return tuple(targets)


def _conf_target(tid: int, cur: Dict[str, Any]) -> ConfTarget:
    stores = cur["stores"]
    glob = cur["globals"]
    numbers: List[Optional[int]] = []
    for store in stores:
        lun = store["params"].get("lun")
        if lun is None and len(stores) == 1:
            lun = glob.get("lun")  # "lun 10" beside a single backing-store line
        try:
            numbers.append(int(lun) if lun is not None else None)
        except ValueError:
            raise TgtParseError(f"line {store['line']}: lun {lun!r} is not a number") from None
    used = {n for n in numbers if n is not None}
    free = (n for n in range(1, 1 << 14) if n not in used)
    luns = []
    for store, number in zip(stores, numbers):
        lun = number if number is not None else next(free)
        p = {**{k: v for k, v in glob.items() if k != "lun"}, **store["params"]}
        luns.append(
            ConfLun(
                number=lun,
                path=store["path"],
                scsi_id=p.get("scsi_id") or f"IET     {tid:04x}{lun:04x}",
                scsi_sn=p.get("scsi_sn") or f"beaf{tid}{lun}",
                vendor_id=p.get("vendor_id") or "IET",
                product_id=p.get("product_id") or "VIRTUAL-DISK",
            )
        )
    return ConfTarget(
        tid,
        cur["iqn"],
        tuple(sorted(luns, key=lambda x: x.number)),
        tuple(cur["addresses"]),
        tuple(cur["params"]),
        tuple(cur["ignored"]),
    )
