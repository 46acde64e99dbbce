"""What the control socket's requests do: ``status``, ``get``, ``log``, ``stale-info``,
``split-brain`` and the role commands (``commands.Command``).

``Requests.dispatch`` takes a parsed request and the client's pid and uid (the kernel's word,
from ``SO_PEERCRED``) and returns the answer object; it never touches a socket. The daemon is
seen through ``ControlledDaemon``, the controller through ``OperatorControls``: that is all the
control socket needs of them. ``status``, ``get`` and ``log`` read the published snapshot and
never wait for a cycle; the role commands go to ``Controller.command`` and so run under the
controller's lock, never beside a cycle.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Tuple

from .commands import ROLE_COMMANDS, Command
from .config import Config
from .control_wire import CODE_OK, CODE_REFUSED, error_answer, quote
from .model import Snapshot
from .state import ManualModeStore

log = logging.getLogger("iscsi_ha.control")

# The names, for the error answer to an unknown command ("known: ...").
COMMANDS: Tuple[str, ...] = tuple(c.value for c in Command)


class OperatorControls(Protocol):
    """What the control socket needs of the controller (``cycle.Controller``)."""

    @property
    def history(self) -> Iterable[Tuple[float, str, str]]:
        """The last cycles' (start time, outcome, sentence)."""

    @property
    def manual_store(self) -> ManualModeStore: ...

    def snapshot(self) -> Optional[Snapshot]: ...

    def command(
        self, name: str, accept_stale: Tuple[str, ...] = (), who: str = ""
    ) -> Tuple[int, str]: ...

    def stale_report(self, name: str) -> Dict[str, object]: ...


class ControlledDaemon(Protocol):
    """What the control socket needs of the daemon (``daemon.Daemon``): its configuration, the
    controller that runs the commands, and a way to start a cycle at once."""

    @property
    def cfg(self) -> Config: ...

    @property
    def config_path(self) -> str: ...

    @property
    def controller(self) -> OperatorControls: ...

    def trigger(self, why: str) -> None: ...

    def run_switchover(self) -> Dict[str, Any]: ...


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
    return [
        {"t": t, "outcome": outcome, "message": message}
        for t, outcome, message in history
        if t > since
    ]


def _copy(history: Iterable[Tuple[float, str, str]]) -> List[Tuple[float, str, str]]:
    # list(deque) runs in C under the GIL, but retry anyway if a cycle appended meanwhile.
    for _ in range(5):
        try:
            return list(history)
        except RuntimeError:
            continue
    return []


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


class Requests:
    """Answers the requests for ``daemon``; ``privileged(uid)`` says who counts as root."""

    def __init__(self, daemon: ControlledDaemon, privileged: Callable[[int], bool]) -> None:
        self.daemon = daemon
        self._privileged = privileged

    def dispatch(self, request: Dict[str, Any], pid: int = 0, uid: int = 0) -> Dict[str, Any]:
        cmd = request["cmd"]
        command = Command.parse(cmd)
        try:
            if command is Command.STATUS:
                return self.status()
            if command is Command.GET:
                return {
                    "ok": True,
                    "config": self.daemon.cfg.to_dict(redact=True),
                    "config_path": self.daemon.config_path,
                }
            if command is Command.LOG:
                since = request.get("since", 0)
                if isinstance(since, bool) or not isinstance(since, (int, float)):
                    return error_answer('"since" must be a unix time (a number)')
                return {
                    "ok": True,
                    "now": time.time(),
                    "entries": history_entries(_copy(self.daemon.controller.history), since),
                }
            if command is Command.STALE_INFO:
                name = request.get("resource")
                try:
                    return {"ok": True, **self.daemon.controller.stale_report(str(name))}
                except KeyError:
                    return error_answer(
                        f"{quote(str(name).encode(), 40)} is not a resource of this controller"
                    )
            if command is Command.SWITCHOVER:
                return self.switchover(pid, uid)
            if command is Command.SPLIT_BRAIN:
                # Evidence, DRBD's resolve steps and the audit line (controller/splitbrain_ops);
                # root only: a step discards data.
                if not self._privileged(uid):
                    return error_answer("split-brain: root only", CODE_REFUSED)
                from .splitbrain_ops import control as split_brain

                who = f"uid {uid}, pid {pid}" + (
                    f", {str(request.get('who'))[:80]}" if request.get("who") else ""
                )
                return split_brain(self.daemon, request, who)
            if command in ROLE_COMMANDS:
                accept = request.get("accept_stale") or []
                only_promotion = command is not Command.BECOME_PRIMARY and accept
                if (
                    only_promotion
                    or not isinstance(accept, list)
                    or not all(isinstance(a, str) for a in accept)
                ):
                    return error_answer(
                        '"accept_stale" is a list of resource names, for become-primary only'
                    )
                who = str(request.get("who") or "")[:80]
                return self.role_command(command, pid, uid, tuple(accept), who)
        except Exception as exc:
            log.exception("control socket: %s failed", cmd)
            return error_answer(
                f"{cmd} failed inside the controller: {type(exc).__name__}: {exc}", CODE_REFUSED
            )
        shown = quote(cmd.encode("utf-8", "backslashreplace"), 40)  # JSON allows lone surrogates
        return error_answer(f"unknown command {shown}; known: {', '.join(COMMANDS)}")

    def status(self) -> Dict[str, Any]:
        controller = self.daemon.controller
        manual: Optional[Dict[str, Any]] = None
        store = controller.manual_store
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

    def role_command(
        self, cmd: str, pid: int, uid: int, accept_stale: Tuple[str, ...] = (), who: str = ""
    ) -> Dict[str, Any]:
        # The uid comes from SO_PEERCRED (the kernel's word); `who` is what the client says.
        by = f"uid {uid}, pid {pid}" + (f", {who}" if who else "")
        if accept_stale:
            log.warning(
                "operator command %s --accept-stale %s (%s)", cmd, ", ".join(accept_stale), by
            )
            code, message = self.daemon.controller.command(cmd, accept_stale=accept_stale, who=by)
            log.log(logging.INFO if code == 0 else logging.WARNING, "%s: %s", cmd, message)
            self._trigger(cmd)
            return {"ok": code == 0, "code": code, "message": message}
        log.info("operator command %s (%s)", cmd, by)
        code, message = self.daemon.controller.command(cmd)
        log.log(logging.INFO if code == 0 else logging.WARNING, "%s: %s", cmd, message)
        self._trigger(cmd)
        return {"ok": code == 0, "code": code, "message": message}

    def switchover(self, pid: int, uid: int) -> Dict[str, Any]:
        log.warning("operator command switchover (uid %d, pid %d)", uid, pid)
        report = self.daemon.run_switchover()
        return {**report, "ok": report.get("code") == CODE_OK}

    def _trigger(self, cmd: str) -> None:
        try:
            # The normal loop follows up at once (and republishes the snapshot).
            self.daemon.trigger(f"operator ran {cmd}")
        except Exception:
            log.exception("cannot trigger a cycle after %s", cmd)
