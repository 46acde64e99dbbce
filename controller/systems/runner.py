"""The only place in iscsi-ha that starts processes.

Every command gets a timeout (a hung ``drbdadm`` or ``tgtadm`` must never hang the loop). The
command runs in its own process group, so on a timeout the whole group is killed, not only the
direct child (``drbdadm`` forks ``drbdsetup``; a shell wrapper forks its payload). Each call is
logged at debug level with its argv, exit code and duration, and counted per command name (the
basename of argv[0]) for the exporter.

Output is decoded as UTF-8 with replacement: what a command prints is partly chosen by others (an
initiator names itself at login and tgt prints that name, a USB device names itself in the kernel
log), and one byte that is not UTF-8 must never turn a reading into an exception. Children get the
controller's environment minus ``hide_env`` (the XenAPI password variable): a secret the
controller needs is no business of ``drbdadm`` or ``tgtd``, nor of whoever reads their
``/proc/PID/environ``.

Adapters receive a runner in their constructor; tests hand them a fake that answers argv prefixes
with captured outputs (``tests/fakes.py``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Protocol, Sequence, Tuple

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
TIMEOUT_RC = 124  # what coreutils' timeout(1) returns; also ours when we kill a command


@dataclass(frozen=True)
class CommandResult:
    argv: Tuple[str, ...]
    rc: int
    stdout: str = ""
    stderr: str = ""
    duration: float = 0.0
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    @property
    def command(self) -> str:
        """`drbdadm cstate iscsi1` — how messages name the command."""
        return "`" + " ".join(self.argv) + "`"

    def describe_failure(self) -> str:
        if self.timed_out:
            return f"{self.command} timed out after {self.duration:.1f}s"
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        detail = text[-1] if text else "no output"
        return f"{self.command} failed (rc {self.rc}): {detail}"


class Background(Protocol):
    """A command started by ``Runner.spawn``."""

    def stop(self) -> None:
        """End it now, its whole process group, if it still runs (once it ended: nothing)."""
        ...


class Runner(Protocol):
    def run(
        self, argv: Sequence[str], timeout: Optional[float] = None, input: Optional[str] = None
    ) -> CommandResult: ...

    def spawn(self, argv: Sequence[str], timeout: Optional[float] = None) -> Optional[Background]:
        """Start a command in the background; it is killed if it outlives ``timeout``. None when
        it could not be started."""
        ...

    def start_daemon(self, argv: Sequence[str], log_path: Optional[str] = None) -> Optional[int]:
        """Start a long-running service (``tgtd -f``) in its own session; return its PID.

        It is not killed when it runs long, and it outlives the controller on purpose: stopping
        the controller must never take the storage away. None when it cannot be started.
        """
        ...


def command_name(argv: Sequence[str]) -> str:
    return os.path.basename(argv[0]) if argv else "?"


class CommandStats:
    """Thread-safe per-command call counts, total durations and timeouts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Dict[str, int] = {}
        self.seconds: Dict[str, float] = {}
        self.timeouts: Dict[str, int] = {}

    def record(self, command: str, duration: float, timed_out: bool) -> None:
        with self._lock:
            self.calls[command] = self.calls.get(command, 0) + 1
            self.seconds[command] = self.seconds.get(command, 0.0) + duration
            if timed_out:
                self.timeouts[command] = self.timeouts.get(command, 0) + 1

    def copy(self) -> Tuple[Dict[str, int], Dict[str, float], Dict[str, int]]:
        with self._lock:
            return dict(self.calls), dict(self.seconds), dict(self.timeouts)


class ProcessRunner:
    def __init__(
        self,
        default_timeout: float = DEFAULT_TIMEOUT,
        stats: Optional[CommandStats] = None,
        env: Optional[Dict[str, str]] = None,
        hide_env: Sequence[str] = (),
    ) -> None:
        self.default_timeout = default_timeout
        self.stats = stats if stats is not None else CommandStats()
        self._env = env
        self.hide_env = tuple(name for name in hide_env if name)

    @property
    def env(self) -> Optional[Dict[str, str]]:
        """The children's environment: ours (as it is now) without the hidden variables."""
        if not self.hide_env:
            return self._env
        base = os.environ if self._env is None else self._env
        return {k: v for k, v in base.items() if k not in self.hide_env}

    def run(
        self, argv: Sequence[str], timeout: Optional[float] = None, input: Optional[str] = None
    ) -> CommandResult:
        argv = tuple(argv)
        limit = self.default_timeout if timeout is None else timeout
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                encoding="utf-8",
                errors="replace",  # never raise on what a command prints
                start_new_session=True,  # own process group: a timeout kills the whole tree
                env=self.env,
            )
        except OSError as exc:
            duration = time.monotonic() - start
            self.stats.record(command_name(argv), duration, False)
            log.debug("run %s: cannot start: %s", argv, exc)
            return CommandResult(argv, 127, "", f"cannot run {argv[0]}: {exc.strerror}", duration)
        timed_out = False
        try:
            out, err = proc.communicate(input=input, timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            # The group is dead; collect what it wrote. Pipes held open by an escaped grandchild
            # must not hang us either.
            try:
                out, err = proc.communicate(timeout=1.0)
            except subprocess.TimeoutExpired:
                out, err = "", ""
        duration = time.monotonic() - start
        rc = TIMEOUT_RC if timed_out else proc.returncode
        self.stats.record(command_name(argv), duration, timed_out)
        if timed_out:
            log.warning("%s timed out after %.1fs and was killed", " ".join(argv), limit)
        log.debug("run %s rc=%s %.3fs", " ".join(argv), rc, duration)
        return CommandResult(argv, rc, out or "", err or "", duration, timed_out)

    def spawn(self, argv: Sequence[str], timeout: Optional[float] = None) -> Optional[Background]:
        argv = tuple(argv)
        limit = self.default_timeout if timeout is None else timeout
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
            )
        except OSError as exc:
            log.warning("cannot start %s in the background: %s", argv[0], exc.strerror)
            return None

        def reap() -> None:
            timed_out = False
            try:
                proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                proc.wait()
            self.stats.record(command_name(argv), time.monotonic() - start, timed_out)
            log.debug("background %s rc=%s", " ".join(argv), proc.returncode)

        threading.Thread(target=reap, name=f"reap-{command_name(argv)}", daemon=True).start()
        return _Spawned(proc)

    def start_daemon(self, argv: Sequence[str], log_path: Optional[str] = None) -> Optional[int]:
        argv = tuple(argv)
        out = open(log_path, "ab") if log_path else None
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if out is None else out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )
        except OSError as exc:
            log.warning("cannot start %s: %s", argv[0], exc.strerror)
            return None
        finally:
            if out is not None:
                out.close()
        # Reap it when it exits so it does not linger as a zombie under the controller.
        threading.Thread(target=proc.wait, name=f"reap-{command_name(argv)}", daemon=True).start()
        log.info("started %s (pid %d)", " ".join(argv), proc.pid)
        return proc.pid


class Stream:
    """A long-running command whose stdout is read line by line (``drbdsetup events2``).

    Its own process group, like every command here; ``stop()`` kills the group and reaps it.
    """

    def __init__(self, argv: Sequence[str], env: Optional[Dict[str, str]] = None) -> None:
        self.argv = tuple(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            text=True,
            errors="replace",
            bufsize=1,
        )
        log.debug("stream %s started (pid %d)", " ".join(self.argv), self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> Iterator[str]:
        """Ends when the command exits or is stopped."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            yield line.rstrip("\n")

    def returncode(self) -> Optional[int]:
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc.poll() is None:
            _kill_group(self.proc)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL of our own group
            pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def open_stream(argv: Sequence[str], env: Optional[Dict[str, str]] = None) -> Stream:
    """Start ``argv`` with its stdout as a line stream; OSError when it cannot be started."""
    return Stream(argv, env)


class _Spawned:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def stop(self) -> None:
        # Not reaped yet, so its PID (and process group) is still this command's own.
        if self.proc.poll() is None:
            _kill_group(self.proc)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:  # should not happen for our own session; fall back to the child
        proc.kill()
