"""The floating IP (VIP): bound with ``ip addr``, announced and probed with iputils ``arping``.

Whether the VIP is local is read from ``ip -o addr show dev IF``: one line per address, e.g.
``2: eth0    inet 10.99.0.3/24 scope global secondary eth0\\  valid_lft forever ...``.

The VIP counts as local when its *address* is on the interface, whatever the prefix. A host that
has 10.10.10.3/16 instead of /24 still answers ARP for 10.10.10.3 and still takes the iSCSI
traffic, so for "never the VIP on two hosts" it must count as held, and ``unbind()`` removes it
with the prefix it actually has (``ip addr del`` needs the exact prefix: "Address not found"; the
configured prefix is tried first, so the usual case stays one command).
The mismatch is a configuration mistake worth telling the operator about, but it is not a reason
to stop the loop, which is what ``VipObservation.error`` does (``decide()`` holds on any error):
it is logged as a warning (once each time it changes) instead. A field for such warnings in
``VipObservation`` would let the status output show it too.

Who else holds the VIP is asked with duplicate address detection, ``arping -D``: probes with
sender address 0.0.0.0, rc 1 as soon as anyone answers, rc 0 after the full count when nobody does
(~2 s). Measured with iputils 20221126 in namespaces: the holder itself gets rc 0 when alone (its
kernel does not answer its own probe), and rc 1 within ~15 ms when a third host has bound the
same address too, so the holder *can* detect a host that took its address; the probe is useful on
both sides. An interface that does not exist gives rc 2 ("Device xenbr0 not available.").

arping -D also exits 1 on a gratuitous ARP *request* for the address ("Broadcast request from
10.99.0.3 [MAC] for 10.99.0.3"): the background ``arping -U`` of a host that has just let the VIP
go goes on for ``announce_count`` seconds and made the new holder's probe read "conflict" right
after a clean move. A host that holds the address answers a probe with a reply within a
millisecond ("Unicast reply from ..."), before any announcement can come in. So only a reply counts
as a conflict; a probe that heard only announcements is repeated (bounded), and reads "conflict"
only if announcements keep coming with no reply.

``ip addr add`` of a present address: rc 2 "Error: ipv4: Address already assigned." (older
iproute2: "RTNETLINK answers: File exists"); ``ip addr del`` of an absent one: rc 2 "Error: ipv4:
Address not found." (older: "Cannot assign requested address"). Both count as done.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from ..model import StepResult, VipObservation
from .runner import Background, CommandResult, Runner

log = logging.getLogger(__name__)

PROBE_COUNT = 2
PROBE_DEADLINE = 2  # arping -w: seconds
PROBE_ATTEMPTS = 3  # probes while only announcements (no replies) are heard
_LINE_RE = re.compile(r"^\d+:\s+\S+\s+(\S+)\s+(\S+)")
_ARPING_RE = re.compile(r"^(?:Unicast|Broadcast) (reply|request) from \S+ \[([0-9A-Fa-f:]+)\]")
_ALREADY = ("Address already assigned", "File exists")
_ABSENT = ("Address not found", "Cannot assign requested address")


@dataclass(frozen=True)
class AddrState:
    """The VIP's address on one interface, from ``ip -o addr show dev IF``."""

    local: bool
    bound_as: Tuple[str, ...] = ()  # every ADDRESS/PREFIX on the interface with the VIP's address
    mismatch: Optional[str] = None  # set when bound, but not with the configured prefix


class AddrParseError(ValueError):
    pass


def parse_addr_show(text: str, address: str) -> AddrState:
    """Is ``address`` ("10.10.10.3/24") on the interface ``text`` describes?

    Raises AddrParseError on a line that is not ``N: IF FAMILY ADDRESS/PREFIX ...``.
    """
    want = ipaddress.ip_interface(address)
    found = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        m = _LINE_RE.match(raw)
        if not m:
            raise AddrParseError(f"unexpected line {raw!r}")
        family, cidr = m.groups()
        if family != "inet" and family != "inet6":
            continue  # link-layer or a family we do not use
        try:
            have = ipaddress.ip_interface(cidr)
        except ValueError:
            raise AddrParseError(f"not an address: {cidr!r} in {raw!r}") from None
        if have.ip == want.ip:
            found.append(str(have))
    mismatch = None
    if found and str(want) not in found:
        mismatch = f"{want.ip} is bound as {', '.join(found)}, configured as {want}"
    return AddrState(bool(found), tuple(found), mismatch)


def parse_arping(text: str) -> Tuple[Tuple[str, str], ...]:
    """(kind, MAC) for every packet ``arping -D`` heard: kind "reply" or "request"."""
    out = []
    for line in text.splitlines():
        m = _ARPING_RE.match(line.strip())
        if m:
            out.append((m.group(1), m.group(2).upper()))
    return tuple(out)


class Vip:
    def __init__(
        self,
        runner: Runner,
        address: str = "10.10.10.3/24",
        interface: str = "xenbr0",
        ip: str = "ip",
        arping: str = "arping",
        announce_count: int = 2,
        timeout: Optional[float] = None,
        on_released: Optional[Callable[[], None]] = None,
        on_bound: Optional[Callable[[], None]] = None,
    ) -> None:
        self.runner = runner
        # Called once the address is gone from here / added here (vip_sessions.VipSessions):
        # they must return at once, they are on the path of a move.
        self.on_released = on_released
        self.on_bound = on_bound
        self.address = str(ipaddress.ip_interface(address))
        self.ip_address = str(ipaddress.ip_interface(address).ip)
        self.interface = interface
        self.ip = ip
        self.arping = arping
        self.announce_count = int(announce_count)
        self.timeout = timeout
        self._last_mismatch: Optional[str] = None
        self._announcing: Optional[Background] = None

    def _run(self, *argv: str, timeout: Optional[float] = None) -> CommandResult:
        return self.runner.run(list(argv), timeout=self.timeout if timeout is None else timeout)

    def _state(self) -> Tuple[Optional[AddrState], Optional[str]]:
        res = self._run(self.ip, "-o", "addr", "show", "dev", self.interface)
        if not res.ok:
            return None, f"cannot read {res.command}: {res.describe_failure()}"
        try:
            state = parse_addr_show(res.stdout, self.address)
        except AddrParseError as exc:
            return None, f"cannot read {res.command}: {exc}"
        if state.mismatch != self._last_mismatch:
            if state.mismatch:
                log.warning("VIP prefix differs from the configuration: %s", state.mismatch)
            self._last_mismatch = state.mismatch
        return state, None

    def observe(self) -> VipObservation:
        """Never raises: what cannot be read is an ``error`` (decide() holds on it)."""
        try:
            state, error = self._state()
        except Exception as exc:  # a parser bug must not stop the loop
            log.exception("reading the VIP failed")
            state, error = None, f"cannot read the VIP's state: {type(exc).__name__}: {exc}"
        if error or state is None:
            return VipObservation(self.address, self.interface, local=False, error=error)
        return VipObservation(self.address, self.interface, local=state.local)

    def probe_conflict(self) -> Optional[bool]:
        """Does another host answer ARP for the VIP? None when arping could not tell."""
        argv = [
            self.arping,
            "-D",
            "-I",
            self.interface,
            "-c",
            str(PROBE_COUNT),
            "-w",
            str(PROBE_DEADLINE),
            self.ip_address,
        ]
        for _ in range(PROBE_ATTEMPTS):
            # arping bounds itself with -w; the runner's timeout is only the backstop.
            res = self.runner.run(argv, timeout=max(self.timeout or 0.0, PROBE_DEADLINE + 3.0))
            if res.timed_out:
                log.warning("VIP probe: %s", res.describe_failure())
                return None
            if res.rc == 0:
                return False
            if res.rc != 1:
                log.warning("VIP probe inconclusive: %s", res.describe_failure())
                return None
            heard = parse_arping(res.stdout)
            replies = [mac for kind, mac in heard if kind == "reply"]
            if replies or not heard:  # a holder answered (or arping's words are unknown: rc 1)
                log.warning(
                    "VIP %s answered on %s by %s",
                    self.ip_address,
                    self.interface,
                    ", ".join(replies) or "someone (arping rc 1)",
                )
                return True
            log.info(
                "VIP probe heard only announcements from %s: probing again",
                ", ".join(mac for _, mac in heard),
            )
        log.warning(
            "VIP %s keeps being announced on %s without a reply: counted as a conflict",
            self.ip_address,
            self.interface,
        )
        return True

    def bind(self) -> StepResult:
        res = self._run(self.ip, "addr", "add", self.address, "dev", self.interface)
        if res.ok:
            self._hook(self.on_bound)
            return StepResult(True, f"{self.address} bound on {self.interface}")
        if res.rc == 2 and any(w in res.stderr for w in _ALREADY):
            return StepResult(True, f"{self.address} already on {self.interface}")
        return StepResult(False, res.describe_failure())

    def unbind(self) -> StepResult:
        # An announcement still running would go on telling the network that the VIP is here
        # after it has gone (arping -U keeps sending with the VIP as its sender address): the
        # clients' ARP caches would point back at this host for up to a second, past the new
        # holder's own announcement, and every connection attempt meanwhile is lost. Measured in
        # the namespace lab before this: a failover less than a second after a bind cost the
        # client 640 ms instead of 120.
        self.stop_announcing()
        res = self._run(self.ip, "addr", "del", self.address, "dev", self.interface)
        if res.ok:
            self._hook(self.on_released)
            return StepResult(True, f"{self.address} removed from {self.interface}")
        if not self._absent(res):
            return StepResult(False, res.describe_failure())
        # Not there with our prefix; under another one it would still answer ARP. `ip addr del`
        # needs the exact prefix, so look which one it has (only on this unusual path).
        state, error = self._state()
        if error or state is None:
            return StepResult(False, error or "")
        removed = []
        for cidr in state.bound_as:
            res = self._run(self.ip, "addr", "del", cidr, "dev", self.interface)
            if res.ok:
                removed.append(cidr)
            elif not self._absent(res):
                return StepResult(False, res.describe_failure())
        if not removed:
            return StepResult(True, f"{self.ip_address} not on {self.interface}")
        self._hook(self.on_released)
        return StepResult(True, f"{', '.join(removed)} removed from {self.interface}")

    @staticmethod
    def _hook(fn: Optional[Callable[[], None]]) -> None:
        if fn is None:
            return
        try:
            fn()
        except Exception:  # the address was added or removed: that is what the step promised
            log.exception("after moving the VIP")

    @staticmethod
    def _absent(res: CommandResult) -> bool:
        return res.rc == 2 and any(w in res.stderr for w in _ABSENT)

    def announce(self) -> StepResult:
        """Gratuitous ARP in the background: arping spends ~1 s per count, never waited for."""
        argv = [
            self.arping,
            "-U",
            "-I",
            self.interface,
            "-c",
            str(self.announce_count),
            self.ip_address,
        ]
        self.stop_announcing()
        self._announcing = self.runner.spawn(argv, timeout=self.announce_count + 3.0)
        return StepResult(True, f"gratuitous ARP for {self.ip_address} on {self.interface} sent")

    def stop_announcing(self) -> None:
        """End the background announcement, if one still runs."""
        announcing, self._announcing = self._announcing, None
        if announcing is not None:
            announcing.stop()
