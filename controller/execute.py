"""execute(): runs a Plan through the adapters, in order, stopping at the first failure.

Each action is one adapter call, and where a command's success does not prove the result, a check
that the world now looks the way the action promised (a Primary after ``drbdadm primary``, every
LUN served after ``serve()``, tgtd answering after its start). Only then does the next action run:
a failed step stops the plan, so a target is never served without Primary and the VIP never points
at a target that is not there. Deleting the target and adding or removing the VIP are trusted on
their command's success (tgtd's or the kernel's acknowledgement): a re-read there would only
lengthen every move, and the next cycle observes them anyway.

An adapter that raises is a failed step, not a crashed cycle: the exception becomes the step's
message and the plan stops there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Protocol, Sequence, Tuple

from .model import (
    Action,
    ActionResult,
    AnnounceVip,
    BindVip,
    Demote,
    DrbdResource,
    Plan,
    PlugPbds,
    Promote,
    ServeTarget,
    SrObservation,
    StartTargetDaemon,
    StepResult,
    StopServingTarget,
    TargetObservation,
    UnbindVip,
    UpResource,
    VipObservation,
    action_name,
)

if TYPE_CHECKING:
    from .systems.drbd import GenerationIds

log = logging.getLogger(__name__)


class DrbdSystem(Protocol):
    def observe(self, resources: Sequence[str]) -> Tuple[DrbdResource, ...]: ...
    def up(self, res: str) -> StepResult: ...
    def primary(self, res: str) -> StepResult: ...
    def secondary(self, res: str) -> StepResult: ...
    def generation_ids(self, res: str) -> Optional["GenerationIds"]: ...


class TargetSystem(Protocol):
    def observe(self) -> TargetObservation: ...
    def start_daemon(self) -> StepResult: ...
    def serve(self) -> StepResult: ...
    def stop_serving(self) -> StepResult: ...


class VipSystem(Protocol):
    def observe(self) -> VipObservation: ...
    def bind(self) -> StepResult: ...
    def unbind(self) -> StepResult: ...
    def announce(self) -> StepResult: ...


class SrSystem(Protocol):
    def observe(self) -> SrObservation: ...
    def plug(self, pbds: Sequence[str]) -> StepResult: ...


@dataclass
class Systems:
    """The adapters a cycle works through (built once by the daemon, faked in tests)."""

    drbd: DrbdSystem
    target: TargetSystem
    vip: VipSystem
    sr: Optional[SrSystem] = None


def execute(
    plan: Plan,
    systems: Systems,
    on_result: Optional[Callable[[ActionResult], None]] = None,
    clock: Callable[[], float] = time.monotonic,
) -> Tuple[ActionResult, ...]:
    results = []
    for action in plan.actions:
        start = clock()
        try:
            step = _apply(action, systems)
        except Exception as exc:  # an adapter bug must not kill the cycle
            log.exception("%s raised", action_name(action))
            step = StepResult(False, f"{action_name(action)} raised {type(exc).__name__}: {exc}")
        result = ActionResult(
            action, step.ok, step.message, clock() - start, step.refused, step.reason
        )
        results.append(result)
        if on_result:
            on_result(result)
        if not step.ok:
            break
    return tuple(results)


def _apply(action: Action, s: Systems) -> StepResult:
    if isinstance(action, UpResource):
        return s.drbd.up(action.resource)
    if isinstance(action, Promote):
        return _then_role(s.drbd.primary(action.resource), s.drbd, action.resource, "Primary")
    if isinstance(action, Demote):
        return _then_role(s.drbd.secondary(action.resource), s.drbd, action.resource, "Secondary")
    if isinstance(action, StartTargetDaemon):
        return _then(
            s.target.start_daemon(),
            lambda: s.target.observe().daemon_running,
            "tgtd does not answer after start",
        )
    if isinstance(action, ServeTarget):
        return _then(
            s.target.serve(),
            lambda: s.target.observe().serving,
            "target is still not serving every LUN after serve",
        )
    # No re-read after these three: their success is the acknowledgement of tgtd (the target
    # is deleted) or of the kernel over netlink (the address is added or gone), and each sits
    # on the path of a move (a bind re-read would delay the gratuitous ARP that moves the
    # clients). The next cycle observes them anyway.
    if isinstance(action, StopServingTarget):
        return s.target.stop_serving()
    if isinstance(action, BindVip):
        return s.vip.bind()
    if isinstance(action, UnbindVip):
        return s.vip.unbind()
    if isinstance(action, AnnounceVip):
        return s.vip.announce()  # started in the background, never waited for
    if isinstance(action, PlugPbds):
        if s.sr is None:
            return StepResult(False, "SR handling is disabled (xenapi.enabled: false)")
        return s.sr.plug(action.pbds)
    raise TypeError(f"unknown action {action!r}")


def _then(step: StepResult, check: Callable[[], bool], failure: str) -> StepResult:
    """Verify a step that reported success; a step that failed is returned as it is."""
    if not step.ok:
        return step
    if not check():
        return StepResult(False, f"{failure} ({step.message})" if step.message else failure)
    return step


def _then_role(step: StepResult, drbd: DrbdSystem, res: str, role: str) -> StepResult:
    if not step.ok:
        return step
    (seen,) = drbd.observe([res])
    if seen.error:
        return StepResult(False, f"{res}: {seen.error}")
    if seen.role != role:
        return StepResult(False, f"{res} is {seen.role} after the command, expected {role}")
    return step
