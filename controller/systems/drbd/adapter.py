"""The adapter: observe every resource with one command per cycle, and drive role changes."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ...files import read_text
from ...model import DrbdResource, StepResult
from ..runner import CommandResult, Runner
from .common import DrbdParseError, cannot_read
from .drbdadm import is_unknown_resource, parse_cstate, parse_dstate, parse_role, parse_sh_minor
from .kernel_log import find_split_brain
from .refusals import _MINOR_EXISTS, drbd_words, parse_refusal
from .v9 import parse_status_json, resource_from_status
from .v84 import (
    GenerationIds,
    parse_get_gi,
    parse_proc_drbd,
    parse_proc_version,
    resource_from_proc,
)

log = logging.getLogger(__name__)


class Drbd:
    """DRBD through one injected runner. ``version`` is ``"auto"``, ``"8.4"`` or ``"9"``."""

    def __init__(
        self,
        runner: Runner,
        version: str = "auto",
        drbdadm: str = "drbdadm",
        drbdsetup: str = "drbdsetup",
        proc_drbd: str = "/proc/drbd",
        kernel_log: Sequence[str] = ("dmesg",),
        timeout: Optional[float] = None,
        read_proc_directly: bool = False,
    ) -> None:
        if version not in ("auto", "8.4", "9"):
            raise ValueError(f"DRBD version must be auto, 8.4 or 9, not {version!r}")
        self.runner = runner
        self.wanted = version
        self.drbdadm = drbdadm
        self.drbdsetup = drbdsetup
        self.proc_drbd = proc_drbd
        self.kernel_log = tuple(kernel_log)
        self.timeout = timeout
        # The daemon reads /proc/drbd itself (no `cat` process on every cycle and after every
        # role change: ~5-50 ms each on a busy dom0); tests drive it through the runner.
        self.read_proc_directly = read_proc_directly
        self._version = ""  # full version from /proc/drbd, "" while unknown
        self._minors: Dict[str, Tuple[int, ...]] = {}  # 8.4: from the configuration, cached

    # -- commands -------------------------------------------------------------------------------

    def _run(self, *argv: str) -> CommandResult:
        return self.runner.run(argv, timeout=self.timeout)

    def _read_proc(self) -> CommandResult:
        if self.read_proc_directly:
            return read_proc_file(self.proc_drbd)
        return self._run("cat", self.proc_drbd)

    @staticmethod
    def _failure(res: CommandResult) -> str:
        if res.timed_out:
            return res.describe_failure()
        return cannot_read(res.command, res.stderr or res.stdout, f"rc {res.rc}")

    # -- version --------------------------------------------------------------------------------

    def version(self) -> str:
        """``"8.4.11"``, ``"9.2.18"``; ``""`` while it cannot be read (module not loaded)."""
        if not self._version:
            res = self._read_proc()
            if res.ok:
                try:
                    self._version = parse_proc_version(res.stdout, res.command)
                except DrbdParseError:
                    pass
        return self._version

    def generation(self) -> Optional[str]:
        """``"8.4"`` or ``"9"`` (configured, or read from /proc/drbd); None while unknown."""
        return self._generation(self.version())

    def _generation(self, version: str) -> Optional[str]:
        if self.wanted != "auto":
            return self.wanted
        if version.startswith("9."):
            return "9"
        if version.startswith("8."):
            return "8.4"
        return None

    # -- observe --------------------------------------------------------------------------------

    def observe(self, resources: Sequence[str]) -> Tuple[DrbdResource, ...]:
        """One entry per resource, in order. Never raises: what cannot be read is an ``error``."""
        names = list(resources)
        try:
            return self._observe(names)
        except Exception as exc:  # a parser bug must not stop the loop; decide() holds on errors
            log.exception("reading DRBD failed")
            return self._all_failed(names, f"cannot read DRBD's state: {exc!r}")

    def _observe(self, names: List[str]) -> Tuple[DrbdResource, ...]:
        proc: Optional[CommandResult] = None
        generation = self.wanted if self.wanted != "auto" else self._generation(self._version)
        if generation is None or generation == "8.4":
            proc = self._read_proc()
            if not proc.ok:
                if _missing_file(proc, self.proc_drbd):
                    # No /proc/drbd: the module is not loaded, so nothing is up (`up` loads it).
                    self._version = ""
                    return tuple(DrbdResource(name=n, configured=False) for n in names)
                return self._all_failed(names, self._failure(proc))
            try:
                self._version = parse_proc_version(proc.stdout, proc.command)
            except DrbdParseError as exc:
                return self._all_failed(names, str(exc))
            generation = self._generation(self._version)
            if generation is None:
                return self._all_failed(
                    names, f"unsupported DRBD version {self._version!r} in {proc.command}"
                )
        if generation == "9":
            observed, minor_names = self._observe_9(names)
        else:
            assert proc is not None
            observed, minor_names = self._observe_84(names, proc)
        return self._mark_split_brain(observed, minor_names)

    def _all_failed(self, names: Sequence[str], error: str) -> Tuple[DrbdResource, ...]:
        return tuple(DrbdResource(name=n, error=error) for n in names)

    def _observe_9(self, names: Sequence[str]) -> Tuple[List[DrbdResource], Dict[int, str]]:
        res = self._run(self.drbdsetup, "status", "--json")
        if not res.ok:
            if self.wanted == "auto":
                self._version = ""  # a module reload may have changed the generation
            return list(self._all_failed(names, self._failure(res))), {}
        try:
            status = parse_status_json(res.stdout, res.command)
        except DrbdParseError as exc:
            return list(self._all_failed(names, str(exc))), {}
        out = []
        minor_names: Dict[int, str] = {}
        for name in names:
            found = status.get(name)
            if found is None:
                out.append(DrbdResource(name=name, configured=False))
                continue
            out.append(resource_from_status(found))
            minor_names.update({d.minor: name for d in found.devices if d.minor is not None})
        return out, minor_names

    def _minors_of(self, name: str) -> Union[Tuple[int, ...], str]:
        """The minors of a resource from the configuration, or an error message."""
        cached = self._minors.get(name)
        if cached is not None:
            return cached
        res = self._run(self.drbdadm, "sh-minor", name)
        if not res.ok:
            return self._failure(res)
        try:
            minors = parse_sh_minor(res.stdout, res.command)
        except DrbdParseError as exc:
            return str(exc)
        self._minors[name] = minors
        return minors

    def _observe_84(
        self, names: Sequence[str], proc: CommandResult
    ) -> Tuple[List[DrbdResource], Dict[int, str]]:
        try:
            table = parse_proc_drbd(proc.stdout, proc.command)
        except DrbdParseError as exc:
            return list(self._all_failed(names, str(exc))), {}
        out = []
        minor_names: Dict[int, str] = {}
        for name in names:
            minors = self._minors_of(name)
            if isinstance(minors, str):
                out.append(DrbdResource(name=name, error=minors))
                continue
            minor_names.update({m: name for m in minors})
            records = [table.get(m) for m in minors]
            if all(r is not None and r.configured for r in records):
                out.append(resource_from_proc(name, [r for r in records if r is not None]))
            else:
                # Not (fully) in /proc/drbd: ask drbdadm, which says "Unconfigured" if it is down.
                out.append(self._observe_by_drbdadm(name))
        return out, minor_names

    def _observe_by_drbdadm(self, name: str) -> DrbdResource:
        """``drbdadm cstate`` (then ``role`` and ``dstate`` if it is up after all)."""
        cstate_res = self._run(self.drbdadm, "cstate", name)
        if is_unknown_resource(cstate_res.rc, cstate_res.stderr + cstate_res.stdout):
            return DrbdResource(name=name, configured=False)
        if not cstate_res.ok:
            return DrbdResource(name=name, error=self._failure(cstate_res))
        try:
            cstate = parse_cstate(cstate_res.stdout, cstate_res.command)
        except DrbdParseError as exc:
            return DrbdResource(name=name, error=str(exc))
        if cstate is None:
            return DrbdResource(name=name, configured=False)
        role_res = self._run(self.drbdadm, "role", name)
        dstate_res = self._run(self.drbdadm, "dstate", name)
        for res in (role_res, dstate_res):
            if not res.ok:
                return DrbdResource(name=name, error=self._failure(res))
        try:
            role = parse_role(role_res.stdout, role_res.command)
            disk = parse_dstate(dstate_res.stdout, dstate_res.command)
        except DrbdParseError as exc:
            return DrbdResource(name=name, error=str(exc))
        if role is None or disk is None:
            # cstate said it is up, role or dstate says it is not: it changed under us.
            return DrbdResource(name=name, error=f"DRBD changed state while {name} was being read")
        return DrbdResource(
            name=name,
            role=role.local,
            peer_role=role.peer or "Unknown",
            connection=cstate,
            disk=disk.local,
            peer_disk=disk.peer or "DUnknown",
        )

    def _mark_split_brain(
        self, observed: List[DrbdResource], minor_names: Mapping[int, str]
    ) -> Tuple[DrbdResource, ...]:
        standalone = {
            i
            for i, r in enumerate(observed)
            if r.configured and r.error is None and r.connection == "StandAlone"
        }
        if not standalone:
            return tuple(observed)  # the usual case: no kernel-log read
        kernel = self._run(*self.kernel_log)
        if not kernel.ok:
            # Without the log a split brain cannot be told from a disconnect: do not guess.
            error = self._failure(kernel)
            return tuple(
                replace(r, error=error) if i in standalone else r for i, r in enumerate(observed)
            )
        flagged = find_split_brain(kernel.stdout, minor_names)
        for minor, name in minor_names.items():
            if minor in flagged:
                flagged = flagged | {name}
        return tuple(
            replace(r, split_brain=True) if i in standalone and r.name in flagged else r
            for i, r in enumerate(observed)
        )

    # -- actions --------------------------------------------------------------------------------

    def up(self, resource: str) -> StepResult:
        """``drbdadm up``. Idempotent: a resource that is already up makes drbdadm fail with
        ``(161) Minor or volume exists already``, which counts as success."""
        self._minors.pop(resource, None)  # the configuration may have changed since
        res = self._run(self.drbdadm, "up", resource)
        if res.timed_out:
            return StepResult(False, res.describe_failure(), reason="timeout")
        if res.ok:
            return StepResult(True, f"{res.command}: brought {resource} up")
        text = res.stderr + "\n" + res.stdout
        exists = _MINOR_EXISTS.search(text)
        if exists:
            return StepResult(
                True, f"{resource} is already up ({res.command}: (161) {exists.group(1).strip()})"
            )
        return self._failed(res)

    def primary(self, resource: str) -> StepResult:
        """``drbdadm primary`` (never ``--force``)."""
        return self._role_change("primary", resource)

    def secondary(self, resource: str) -> StepResult:
        return self._role_change("secondary", resource)

    def outdate(self, resource: str) -> StepResult:
        """``drbdadm outdate``: mark this (Secondary, disconnected) disk Outdated, for the peer's
        fence-peer handler. DRBD refuses it on a Primary; its words come back refused."""
        return self._role_change("outdate", resource)

    def generation_ids(self, resource: str) -> Optional[GenerationIds]:
        """DRBD 8.4's ``drbdadm get-gi``; None when it cannot be read (or on DRBD 9, whose
        get-gi is per peer and not captured yet)."""
        if self.generation() != "8.4":
            return None
        res = self._run(self.drbdadm, "get-gi", resource)
        if not res.ok:
            return None
        try:
            return parse_get_gi(res.stdout, res.command)
        except DrbdParseError as exc:
            log.debug("%s", exc)
            return None

    def _role_change(self, verb: str, resource: str) -> StepResult:
        res = self._run(self.drbdadm, verb, resource)
        if res.timed_out:
            return StepResult(False, res.describe_failure(), reason="timeout")
        if res.ok:
            return StepResult(True, f"{res.command}: {resource} is {verb.capitalize()}")
        return self._failed(res)

    def _failed(self, res: CommandResult) -> StepResult:
        text = res.stderr + "\n" + res.stdout
        refusal = parse_refusal(text)
        if refusal:
            _code, reason, words = refusal
            return StepResult(
                False, f"{res.command} refused by DRBD (rc {res.rc}): {words}", True, reason
            )
        return StepResult(
            False, f"{res.command} failed (rc {res.rc}): {drbd_words(text)}", reason="failed"
        )


def _missing_file(res: CommandResult, path: str) -> bool:
    """``cat`` says the file does not exist (not: ``cat`` itself could not be started)."""
    return (
        res.rc == 1
        and not res.timed_out
        and path in res.stderr
        and ("No such file or directory" in res.stderr)
    )


PROC_LIMIT = 1024 * 1024  # /proc/drbd is a few hundred bytes per minor


def read_proc_file(path: str) -> CommandResult:
    """``/proc/drbd`` read in this process, answered as ``cat`` would (rc 1 and cat's words
    when it is missing, so ``_missing_file`` and the messages stay the same). A procfs read does
    not wait for I/O: it needs no process and no timeout of its own."""
    argv = ("cat", path)
    t0 = time.monotonic()
    try:
        text = read_text(path, PROC_LIMIT)
    except FileNotFoundError:
        return CommandResult(
            argv, 1, "", f"cat: {path}: No such file or directory", time.monotonic() - t0
        )
    except OSError as exc:
        return CommandResult(
            argv, 1, "", f"cat: {path}: {exc.strerror or exc}", time.monotonic() - t0
        )
    return CommandResult(argv, 0, text, "", time.monotonic() - t0)
