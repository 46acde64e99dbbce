"""``iscsi-cfg split-brain``: both hosts' evidence side by side, and the guided resolve.

Everything goes through the local controller's control socket (command ``split-brain``); the
local controller relays what concerns the other host over the peer channel. The decisions
(is it a split brain, which side to keep, what is refused, which steps in which order) are the
pure ``controller/splitbrain.py``; this module asks, shows, confirms and follows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import cli_common
from . import splitbrain as sb
from .cli_common import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, err

EVIDENCE_ATTEMPTS = 3
TRANSIENT = ("timeout", "unreachable", "tls", "bad_answer")  # PeerError kinds worth a retry
# Evidence waits for the controller's lock (one cycle at most) and, for the peer's side, the
# peer channel; a step is one drbdadm call.
CALL_TIMEOUT = 180.0
FOLLOW_PERIOD = 1.0
RESYNC_TIMEOUT = 6 * 3600.0

SHORT = "show both hosts' evidence of a DRBD split brain; resolve it (guided)"
LONG = """\
iscsi-cfg split-brain [RESOURCE] [--json]
iscsi-cfg split-brain resolve --survivor HOST RESOURCE [--yes] [--force]

Without `resolve` (read only, changes nothing): for each resource (or RESOURCE), both hosts'
view side by side, the peer's gathered over the peer channel: DRBD roles and connection states,
whether each kernel log detected the split brain (real DRBD 8.4 detects it on one side only about
one time in three; the other stays WFConnection), how much each side changed since they parted
(DRBD's out-of-sync count), DRBD's generation identifiers (drbdadm get-gi), which side holds the
VIP and has iSCSI sessions now, and from each controller's ledger when it was Primary without its
peer, for how long, and with how many sessions (the VMs' writes). Then a recommendation with its
reasons, and what choosing it would discard.

`resolve --survivor HOST RESOURCE`: keeps HOST's data and discards the other host's changes
since the split. Shows what will be discarded and asks for the resource name typed back (or
--yes). Refused, with the reason, while the victim serves (iSCSI sessions, the VIP, Primary
with the target on it: run `iscsi-cfg manual-mode-enable` and `iscsi-cfg become-secondary` on
it first), while the victim's controller would promote it again, or when HOST is not the side
the VMs wrote to (--force overrides that one, after a second confirmation). Then it runs DRBD's
steps on both hosts in order (victim: disconnect if not StandAlone, secondary, connect
--discard-my-data; survivor: connect if StandAlone), follows the resync with progress and an
ETA, verifies both UpToDate with the same data generation, and writes an audit line to both
controllers' logs and <state_dir>/split-brain.log.

If the controllers or the peer channel are down, use the manual steps in docs/runbook.md."""


class _Intermixed(argparse.ArgumentParser):
    """Options anywhere among the words: `resolve --survivor node1 r0` as well as
    `resolve r0 --survivor node1` (plain argparse stops the word list at the first option)."""

    _inner = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._inner:  # parse_known_intermixed_args calls this twice itself
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def add_parser(sub: Any, epilog: str, fmt: Any) -> None:
    sp = sub.add_parser(
        "split-brain", help=SHORT, description=LONG, epilog=epilog, formatter_class=fmt
    )
    sp.__class__ = _Intermixed
    sp.add_argument(
        "words",
        nargs="*",
        metavar="[resolve] RESOURCE",
        help="a resource (default: all), or `resolve RESOURCE`",
    )
    sp.add_argument("--json", action="store_true", help="print the evidence as JSON")
    sp.add_argument(
        "--survivor",
        metavar="HOST",
        help="with resolve: the host whose data is kept (its node_name)",
    )
    sp.add_argument(
        "--yes", action="store_true", help="with resolve: do not ask for confirmation (scripts)"
    )
    sp.add_argument(
        "--force",
        action="store_true",
        help="with resolve: override the refusal to discard the side the VMs wrote "
        "to (asks a second confirmation unless --yes)",
    )
    sp.add_argument(
        "--snapshot",
        action="store_true",
        help="with resolve: first keep the victim's data in a read-only LVM snapshot "
        "of its backing device (refused when it is not on LVM or the volume group "
        "lacks the space); says how to read it later",
    )
    sp.add_argument(
        "--timeout",
        type=float,
        default=RESYNC_TIMEOUT,
        metavar="SECONDS",
        help="with resolve: how long to follow the resync (default 6 h)",
    )


def _who() -> str:
    user = os.environ.get("SUDO_USER") or os.environ.get("USER") or ""
    return f"user {user}" if user else ""


class Channel:
    """The two hosts as seen through the local controller."""

    def __init__(
        self,
        ask: Callable[[Dict[str, Any]], Dict[str, Any]],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._ask = ask
        self.sleep = sleep
        self.unreachable = False  # the local controller did not answer
        self.last_kind: Optional[str] = None  # why the last relayed call failed (PeerError.kind)

    def call(self, where: str, args: Dict[str, Any]) -> Tuple[bool, Any]:
        req = {"cmd": "split-brain", "who": _who(), **args}
        if where == "peer":
            req["host"] = "peer"
        answer = self._ask(req)
        self.unreachable = self.unreachable or bool(answer.get("unreachable"))
        self.last_kind = answer.get("kind") if not answer.get("ok") else None
        if not answer.get("ok"):
            return False, str(answer.get("error") or answer.get("message") or "refused")
        return True, answer.get("result")

    def sides(self, resource: str) -> Tuple[sb.Side, sb.Side]:
        out = []
        for where in ("local", "peer"):
            # Evidence only reads: a call the peer channel lost on the way (a slow TLS
            # handshake on a loaded host) is asked again, a few times.
            for _attempt in range(EVIDENCE_ATTEMPTS):
                ok, result = self.call(where, {"action": "evidence", "resource": resource})
                if ok or self.last_kind not in TRANSIENT:
                    break
                self.sleep(1.0)
            side: Optional[sb.Side] = None
            if ok and isinstance(result, dict):
                try:
                    side = sb.side_from_dict(result)
                except ValueError as exc:
                    result = f"unreadable answer: {exc}"
            if side is None:
                side = sb.Side(
                    "the peer" if where == "peer" else "this host", resource, error=str(result)
                )
            out.append(side)
        return out[0], out[1]


def run(where: Any, args: argparse.Namespace) -> int:
    def ask(req: Dict[str, Any]) -> Dict[str, Any]:
        try:
            return cli_common.ask(where.socket, req, timeout=CALL_TIMEOUT)
        except (cli_common.Unreachable, cli_common.Denied) as exc:
            return {
                "ok": False,
                "error": f"the local iscsi-ha controller: {exc}",
                "unreachable": True,
            }

    channel = Channel(ask)
    words = list(args.words)
    if words[:1] == ["resolve"]:
        if len(words) != 2 or not args.survivor:
            err("usage: iscsi-cfg split-brain resolve --survivor HOST RESOURCE")
            return EXIT_USAGE
        return resolve(
            channel, words[1], args.survivor, args.yes, args.force, args.timeout, keep=args.snapshot
        )
    if args.survivor or args.force or args.snapshot:
        err("--survivor, --force and --snapshot belong to `split-brain resolve`")
        return EXIT_USAGE
    if len(words) > 1:
        err("usage: iscsi-cfg split-brain [RESOURCE]")
        return EXIT_USAGE
    resources = words
    if not resources:
        answer = ask({"cmd": "get"})
        if not answer.get("ok"):
            err(str(answer.get("error") or "cannot read the configuration"))
            return EXIT_UNREACHABLE if answer.get("unreachable") else EXIT_REFUSED
        resources = [str(r) for r in (answer.get("config") or {}).get("resources") or []]
    assessments = [sb.assess(*channel.sides(r)) for r in resources]
    if args.json:
        print(json.dumps([sb.assessment_to_dict(a) for a in assessments], indent=2))
    else:
        print("\n\n".join(sb.render(a) for a in assessments))
    if channel.unreachable:
        return EXIT_UNREACHABLE
    unreadable = [a for a in assessments if a.kind == "unknown"]
    return EXIT_REFUSED if unreadable and len(unreadable) == len(assessments) else EXIT_OK


def _confirm(prompt: str, expected: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(prompt).strip() == expected


def resolve(
    channel: Channel,
    resource: str,
    survivor: str,
    yes: bool,
    force: bool,
    follow_limit: float,
    sleep: Callable[[float], None] = time.sleep,
    out: Callable[[str], None] = print,
    keep: bool = False,
) -> int:
    """Keep ``survivor``'s data of ``resource``: check, show, confirm, look again, (snapshot),
    run DRBD's steps, follow the resync to a verified end, audit. Each step stops on failure."""
    a = sb.assess(*channel.sides(resource))
    out(sb.render(a))
    hard, forceable = sb.refusals(a, survivor)
    code = _refusal(a, survivor, hard, forceable, force, keep)
    if code is not None:
        return code
    victim = a.other(survivor)
    steps = sb.plan(a, survivor)
    _show_plan(a, resource, survivor, steps, keep, out)
    if not yes:
        code = _confirmation(resource, victim.host, forceable)
        if code is not None:
            return code
    if not _unchanged(channel, resource, survivor, steps):
        return EXIT_REFUSED
    amount = victim.out_of_sync_bytes
    if keep and not _snapshot(channel, a, resource, survivor, out):
        return EXIT_REFUSED
    if not _run_steps(channel, a, resource, steps, out):
        return EXIT_REFUSED
    t0 = time.monotonic()
    verdict = _follow(channel, resource, follow_limit, sleep, out)
    took = time.monotonic() - t0
    if verdict is None:
        return EXIT_REFUSED
    if not verdict.done:
        err(f"not verified after {took:.0f} s: {verdict.sentence}")
        return EXIT_REFUSED
    out(f"Resynced and verified in {took:.1f} s: {verdict.sentence}")
    who = f"uid {os.getuid()}" + (f" ({_who()})" if _who() else "")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = sb.audit_line(
        resource, survivor, victim.host, amount, who, when, took, verdict.sentence, bool(forceable)
    )
    _audit(channel, line, out)
    return EXIT_OK


def _refusal(
    a: sb.Assessment,
    survivor: str,
    hard: List[str],
    forceable: List[str],
    force: bool,
    keep: bool,
) -> Optional[int]:
    """The exit code when the resolve is refused (the reasons printed), else None."""
    if keep and not hard and sb.snapshot_refusal(a, survivor):
        hard.append(f"--snapshot: {sb.snapshot_refusal(a, survivor)}")
    if hard:
        err("refused: " + "\n  ".join(hard + forceable))
        return EXIT_REFUSED
    if forceable and not force:
        err(
            "refused: "
            + "\n  ".join(forceable)
            + "\n  (--force overrides this, with a second confirmation)"
        )
        return EXIT_REFUSED
    return None


def _show_plan(
    a: sb.Assessment,
    resource: str,
    survivor: str,
    steps: Tuple[sb.Step, ...],
    keep: bool,
    out: Callable[[str], None],
) -> None:
    victim = a.other(survivor)
    out(f"\nResolving {resource}: keep {survivor}, discard {victim.host}.")
    out(f"Discarded: {sb.discarded(a, survivor)}")
    out("Steps:")
    if keep:
        out(
            f"  {victim.host}$ lvcreate --snapshot --permission r ... {victim.lvm_volume}    "
            f"# keep {victim.host}'s data ({sb._size(sb.snapshot_size(a, survivor))} "
            "copy-on-write)"
        )
    for step in steps:
        out(f"  {step.host}$ {step.command} {resource}    # {step.why}")


def _confirmation(resource: str, victim: str, forceable: List[str]) -> Optional[int]:
    """None when the operator typed the confirmations back, else the exit code."""
    if not sys.stdin.isatty():
        err("refused: not a terminal; confirm interactively or pass --yes")
        return EXIT_USAGE
    if not _confirm(
        f"Type the resource name ({resource}) to discard {victim}'s changes: ", resource
    ):
        err("not confirmed; nothing was done")
        return EXIT_REFUSED
    if forceable and not _confirm(
        f"FORCED: {' '.join(forceable)}\nType {victim} to discard its data anyway: ", victim
    ):
        err("not confirmed; nothing was done")
        return EXIT_REFUSED
    return None


def _unchanged(channel: Channel, resource: str, survivor: str, steps: Tuple[sb.Step, ...]) -> bool:
    """The state may have moved while the operator read: look again before touching anything."""
    again = sb.assess(*channel.sides(resource))
    hard, _ = sb.refusals(again, survivor)
    if hard or sb.plan(again, survivor) != steps:
        err("refused: the situation changed while confirming; nothing was done. " + " ".join(hard))
        return False
    return True


def _where(a: sb.Assessment, host: str) -> str:
    return "local" if host == a.sides[0].host else "peer"


def _snapshot(
    channel: Channel, a: sb.Assessment, resource: str, survivor: str, out: Callable[[str], None]
) -> bool:
    """The victim's data kept in a read-only LVM snapshot first (--snapshot)."""
    victim = a.other(survivor)
    ok, result = channel.call(
        _where(a, victim.host),
        {
            "action": "snapshot",
            "resource": resource,
            "size": sb.snapshot_size(a, survivor),
            "stamp": time.strftime("%Y%m%dT%H%M%S", time.gmtime()),
        },
    )
    if not ok or not isinstance(result, dict) or not result.get("ok"):
        said = result.get("said") if isinstance(result, dict) else result
        err(f"{victim.host}: the snapshot failed: {said}; nothing was discarded")
        return False
    out(f"  {victim.host}$ {result.get('said')}")
    out(sb.snapshot_help(victim.host, str(result.get("snapshot"))))
    return True


def _run_steps(
    channel: Channel,
    a: sb.Assessment,
    resource: str,
    steps: Tuple[sb.Step, ...],
    out: Callable[[str], None],
) -> bool:
    """DRBD's steps in order on their hosts; never retried: the first failure stops the rest."""
    for step in steps:
        ok, result = channel.call(
            _where(a, step.host), {"action": "step", "resource": resource, "step": step.action}
        )
        if not ok or not isinstance(result, dict):
            err(
                f"{step.host}: {step.command} {resource}: {result}; stopped here (see "
                "docs/runbook.md, split brain, for the manual steps)"
            )
            return False
        said = result.get("said") or ""
        if not result.get("ok"):
            if step.action == sb.DISCONNECT and "(162)" in said:
                said = "already StandAlone"  # DRBD 8.4's answer to disconnecting a StandAlone
            else:
                err(
                    f"{step.host}$ {result.get('command')}: rc {result.get('rc')}: "
                    f"{result.get('refusal') or said}; stopped here, nothing further was "
                    "run (see docs/runbook.md, split brain, for the manual steps)"
                )
                return False
        out(f"  {step.host}$ {result.get('command')}: ok{' (' + said + ')' if said else ''}")
    return True


def _follow(
    channel: Channel,
    resource: str,
    follow_limit: float,
    sleep: Callable[[float], None],
    out: Callable[[str], None],
) -> Optional[sb.Verdict]:
    """Progress lines until both sides verify (or ``follow_limit``); None when DRBD detected the
    split brain again, a verdict that is not done when time ran out or nothing answered."""
    t0 = time.monotonic()
    verdict, last = None, ""
    while time.monotonic() - t0 < follow_limit:
        local, peer = channel.sides(resource)
        if local.split_brain or peer.split_brain:
            err(
                "DRBD detected the split brain again after the reconnect; see "
                "`iscsi-cfg split-brain` and docs/runbook.md"
            )
            return None
        verdict = sb.verify(local, peer)
        if verdict.done:
            break
        line = sb.progress(local, peer)
        if line != last:
            out(f"  {time.monotonic() - t0:5.1f}s {line}")
            last = line
        sleep(FOLLOW_PERIOD)
    return verdict or sb.Verdict(False, "no answer")


def _audit(channel: Channel, line: str, out: Callable[[str], None]) -> None:
    """The audit line on both hosts; a host that could not record it is said, not fatal."""
    problems = []
    for where in ("local", "peer"):
        ok, result = channel.call(where, {"action": "audit", "line": line})
        if not ok:
            problems.append(f"{where}: {result}")
        elif isinstance(result, dict) and result.get("error"):
            problems.append(f"{where}: logged, but not written to its file: {result['error']}")
    out(f"Audit: {line}")
    if problems:
        err("the audit line could not be recorded everywhere: " + "; ".join(problems))
