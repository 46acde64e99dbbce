"""DRBD's own state-change stream, so the controller reacts when DRBD changes, not on a timer.

A new master that finds its peer still Primary must promote the moment the peer is Secondary.
Polling ``drbdadm role`` for that costs a sleep on the critical path; DRBD announces every state
change itself, on a netlink broadcast that ``drbdsetup`` prints as lines:

* DRBD 8.4, ``drbdsetup events all``: ``<seq> <type> <minor>,<res>[<vol>] { cs:.. ro:L/P ds:L/P
  flags }`` for state changes (``ST``; ``ST-prev``/``ST-new`` bracket the same change), and
  ``R``, ``UH``/``UH-post`` (helpers) lines that carry no state;
* DRBD 9, ``drbdsetup events2 all``: ``<verb> <object> name:<res> key:value ...`` with verbs
  ``exists`` (the dump at start, ended by ``exists -``), ``create``, ``change``, ``destroy``,
  and ``call``/``response`` for helpers.

Both formats are parsed from real captures (``tests/fixtures/drbd84-events/``: one 8.4.11 VM
lab run through bring-up, a sync, six switchovers, a cut and healed link and ``down``; drbd-utils
9.22 speaks both to the 8.4 kernel). This module only *wakes* the loop: the cycle still reads
DRBD's state itself, so a missed, garbled or unknown line can delay a reaction to the next
interval but never make a decision. The stream is restarted with back-off when it ends, and every
(re)start wakes the loop once, because changes made while nobody listened are not replayed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from ..runner import Stream, open_stream

log = logging.getLogger(__name__)

# 8.4: "10 ST 0,r0[0] { cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate r--- }"
_EV84 = re.compile(
    r"^\d+ (?P<type>[A-Za-z-]+) (?P<minor>\d+),(?P<res>[^\s\[]+)\[(?P<vol>\d+)\]"
    r"(?: \{ (?P<body>[^}]*) \})?"
)
_EV84_FIELD = re.compile(r"\b(cs|ro|ds):(\S+)")
EVENTS2_VERBS = ("exists", "create", "change", "destroy")
EVENTS2_OBJECTS = ("resource", "connection", "device", "peer-device", "path")
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
HEALTHY_RUN = 60.0  # a stream that ran this long starts its back-off from the beginning again


@dataclass(frozen=True)
class DrbdEvent:
    """One state change of one resource. ``fields`` as DRBD printed them (8.4: cs, ro, ds)."""

    resource: str
    verb: str  # 8.4: "ST"; 9: create/change/destroy/exists
    obj: str  # 8.4: "state"; 9: resource/connection/device/peer-device/path
    fields: Dict[str, str] = field(default_factory=dict)

    @property
    def initial(self) -> bool:
        """Part of the dump of what already was (events2's ``exists``), not a change."""
        return self.verb == "exists"


def parse_events84(line: str) -> Optional[DrbdEvent]:
    """A state change from ``drbdsetup events`` (8.4), or None for any other line."""
    m = _EV84.match(line.strip())
    if not m or m.group("type") != "ST" or m.group("body") is None:
        return None
    fields = dict(_EV84_FIELD.findall(m.group("body")))
    fields["minor"], fields["volume"] = m.group("minor"), m.group("vol")
    return DrbdEvent(m.group("res"), "ST", "state", fields)


def parse_events2(line: str) -> Optional[DrbdEvent]:
    """A state line from ``drbdsetup events2`` (9; also drbd-utils 9 on 8.4), or None."""
    words = line.split()
    if len(words) < 3 or words[0] not in EVENTS2_VERBS or words[1] not in EVENTS2_OBJECTS:
        return None
    fields = dict(w.split(":", 1) for w in words[2:] if ":" in w)
    name = fields.pop("name", "")
    if not name:
        return None
    return DrbdEvent(name, words[0], words[1], fields)


def events_argv(generation: Optional[str], drbdsetup: str = "drbdsetup") -> Optional[List[str]]:
    """The stream to follow for a DRBD generation ("8.4" or "9"); None while it is unknown."""
    if generation == "9":
        return [drbdsetup, "events2", "all"]
    if generation == "8.4":
        return [drbdsetup, "events", "all"]
    return None


def wakes(event: DrbdEvent, resources: Iterable[str]) -> bool:
    """Does this event concern the controller? Changes of its resources, not the start dump."""
    return not event.initial and event.resource in set(resources)


class DrbdEventSource:
    """Follows the stream in a thread and calls ``on_event(event)`` for each change that wakes.

    ``argv()`` is asked at every (re)start (the DRBD generation may only be known once the module
    is loaded); ``None`` means "not yet": it waits and asks again. ``opener`` starts the stream
    (``runner.open_stream``; tests pass a replay of a capture).
    """

    def __init__(
        self,
        argv: Callable[[], Optional[Sequence[str]]],
        resources: Sequence[str],
        on_event: Callable[[DrbdEvent], None],
        on_restart: Callable[[str], None] = lambda why: None,
        opener: Callable[[Sequence[str]], Stream] = open_stream,
        delays: Sequence[float] = RESTART_DELAYS,
    ) -> None:
        self.argv = argv
        self.resources = tuple(resources)
        self.on_event = on_event
        self.on_restart = on_restart
        self.opener = opener
        self.delays = tuple(delays)
        self.state = "stopped"  # following / waiting / stopped
        self.starts = 0
        self.events = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stream: Optional[Stream] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="drbd-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.state = "stopped"

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            argv = self.argv()
            if not argv:
                self.state = "waiting"
                self._stop.wait(self.delays[-1] if failures else self.delays[0])
                failures += 1
                continue
            parse = parse_events2 if "events2" in argv else parse_events84
            started = time.monotonic()
            try:
                stream = self.opener(argv)
            except OSError as exc:
                self._gone(f"cannot start {' '.join(argv)}: {exc}", failures)
                failures += 1
                continue
            with self._lock:
                self._stream = stream
            if self._stop.is_set():
                stream.stop()
                break
            self.state = "following"
            self.starts += 1
            log.info("following DRBD state changes: %s (pid %d)", " ".join(argv), stream.pid)
            self.on_restart(
                "DRBD event stream started" if self.starts == 1 else "DRBD event stream restarted"
            )
            self._follow(stream, parse)
            stream.stop()
            with self._lock:
                self._stream = None
            if self._stop.is_set():
                break
            if time.monotonic() - started >= HEALTHY_RUN:
                failures = 0
            self._gone(f"{' '.join(argv)} ended (rc {stream.returncode()})", failures)
            failures += 1
        self.state = "stopped"

    def _follow(self, stream: Stream, parse: Callable[[str], Optional[DrbdEvent]]) -> None:
        for line in stream.lines():
            try:
                event = parse(line)
            except Exception:  # an unexpected line must not end the stream
                log.debug("unparsed DRBD event line %r", line, exc_info=True)
                continue
            if event is not None and wakes(event, self.resources):
                self.events += 1
                try:
                    self.on_event(event)
                except Exception:
                    log.exception("handling a DRBD event failed")

    def _gone(self, why: str, failures: int) -> None:
        delay = self.delays[min(failures, len(self.delays) - 1)]
        log.warning("%s; the interval covers meanwhile, trying again in %gs", why, delay)
        self.state = "waiting"
        self._stop.wait(delay)
