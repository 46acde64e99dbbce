"""Converting the original tool's shell-style ``iscsi-ha.conf`` to our YAML model.

The original iscsi-ha (HA-Lizard's noSAN add-on) keeps its settings in a file that bash
``source``s: ``KEY=value`` lines, comments, quotes, sometimes ``export``. We do not run bash on it
(a configuration file must not execute anything); instead a small scanner understands exactly
the part of shell syntax such files use (comments, ``export``, single and double quotes,
backslashes, ``;``) and refuses the rest with the line number, rather than guess.

Each setting is then mapped, dropped or refused, and every decision that is not a plain copy
becomes a note, which ``render_yaml`` writes as comments at the top of the new file, so the
operator can read what happened to each line. Values of dropped settings are never repeated in
notes or errors: ``SMTP_PASS`` is among them.

What the original settings meant (its iscsi-ha.conf and its monitor script, iscsi-ha.mon):

* ``MONITOR_DELAY``: seconds between two runs of the logic -> ``interval``.
* ``MONITOR_MAX_STARTS`` / ``MONITOR_SCANRATE`` / ``MONITOR_KILLALL``: when a run is still going
  at the next start, the monitor retries every SCANRATE seconds; after MAX_STARTS retries it
  declares the run hung (mail) and, with KILLALL=1, kills it. A run was thus declared hung about
  ``DELAY + MAX_STARTS * SCANRATE`` seconds after it started; that becomes ``cycle_deadline``
  (overrun reported). There is nothing to kill here: every command has a timeout and is killed
  when it runs over, so a cycle cannot hang.
* ``ENABLE_LOGGING``: 1 = log to syslog, 0 = silence -> ``logging``.
* ``ISCSI_TARGET_SERVICE``: the tgtd system service it started -> we run tgtd ourselves.
* ``MAIL_*`` / ``SMTP_*``: e-mail alerts -> replaced by Prometheus alerts and Alertmanager.
* ``MANUAL_MODE``, ``SERVER_ONE_IP``, ``SERVER_TWO_IP``, ``REPLICATION_IP_ISCSI``: not settings
  of ours (manual mode is a persisted state; replication addresses belong to DRBD).
"""

from __future__ import annotations

import ipaddress
import os
import re
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import yaml

from .config import RESOURCE_NAME, ConfigError, parse_config
from .files import CONFIG_LIMIT, read_capped

# The values the original shipped, used where a computation needs a setting the file lacks.
ORIGINAL_MONITOR_DELAY = 10
ORIGINAL_MONITOR_SCANRATE = 5

_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NUMBER = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_UNSUPPORTED = "|&<>()"  # pipes, redirections, subshells, arrays: not a plain assignment
_NOT_SETTINGS = ("MANUAL_MODE", "SERVER_ONE_IP", "SERVER_TWO_IP", "REPLICATION_IP_ISCSI")
_MAIL_PREFIXES = ("MAIL_", "SMTP_")


@dataclass(frozen=True)
class Assignment:
    name: str
    value: str
    line: int
    expanded: bool  # the value has a $ or ` expansion that bash would have performed


@dataclass
class _Word:
    text: str
    name: Optional[str]  # set when the word is NAME=value
    expanded: bool


# --------------------------------------------------------------------------------------------
# The scanner
# --------------------------------------------------------------------------------------------


def scan_assignments(text: str) -> Tuple[List[Assignment], List[str]]:
    """The ``KEY=value`` assignments of a shell-style file, and "line N: ..." problems.

    Problems never quote a value (it may be a password).
    """
    out: List[Assignment] = []
    problems: List[str] = []
    s = _Scan(text)
    while not s.done():
        c = s.peek()
        if c in " \t\r;":
            s.i += 1
        elif c == "\n":
            s.newline()
        elif c == "#":
            s.skip_line()
        else:
            line = s.line
            try:
                words = s.command()
            except _ShellError as exc:
                problems.append(f"line {exc.line or line}: {exc}")
                s.skip_line()
                continue
            problems.extend(_assignments(words, line, out))
    return out, problems


class _ShellError(Exception):
    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line


class _Scan:
    def __init__(self, text: str) -> None:
        self.t = text
        self.i = 0
        self.line = 1

    def done(self) -> bool:
        return self.i >= len(self.t)

    def peek(self, ahead: int = 0) -> str:
        j = self.i + ahead
        return self.t[j] if j < len(self.t) else ""

    def newline(self) -> None:
        self.i += 1
        self.line += 1

    def skip_line(self) -> None:
        end = self.t.find("\n", self.i)
        self.i = len(self.t) if end < 0 else end

    def command(self) -> List[_Word]:
        """The words of one simple command, up to an unquoted newline, ';' or comment."""
        words: List[_Word] = []
        while not self.done():
            c = self.peek()
            if c in "\n;":
                break
            if c in " \t\r":
                self.i += 1
            elif c == "#":  # only at the start of a word, as in the shell
                self.skip_line()
                break
            else:
                words.append(self.word())
        return words

    def word(self) -> _Word:
        m = _ASSIGNMENT.match(self.t, self.i)
        name = None
        if m:
            name = m.group()[:-1]
            self.i = m.end()
        chars: List[str] = []
        expanded = False
        while not self.done():
            c = self.peek()
            if c in " \t\r\n;":
                break
            if c in _UNSUPPORTED:
                raise _ShellError(
                    f"unsupported shell syntax {c!r}: only KEY=value assignments can be converted"
                )
            if c == "\\":
                nxt = self.peek(1)
                if nxt == "\n":  # line continuation
                    self.i += 2
                    self.line += 1
                else:
                    chars.append(nxt)
                    self.i += 2
            elif c == "'":
                start = self.line
                end = self.t.find("'", self.i + 1)
                if end < 0:
                    raise _ShellError("unterminated single quote", start)
                chunk = self.t[self.i + 1 : end]
                chars.append(chunk)
                self.line += chunk.count("\n")
                self.i = end + 1
            elif c == '"':
                expanded |= self._double_quoted(chars)
            else:
                if c in "$`" and self._expands():
                    expanded = True
                chars.append(c)
                self.i += 1
        return _Word("".join(chars), name, expanded)

    def _expands(self) -> bool:
        c, nxt = self.peek(), self.peek(1)
        return c == "`" or (nxt != "" and (nxt.isalnum() or nxt in "_{(@*#?$!-"))

    def _double_quoted(self, chars: List[str]) -> bool:
        start = self.line
        self.i += 1
        expanded = False
        while True:
            if self.done():
                raise _ShellError("unterminated double quote", start)
            c = self.peek()
            if c == '"':
                self.i += 1
                return expanded
            if c == "\\" and self.peek(1) in ('"', "\\", "$", "`", "\n"):
                if self.peek(1) == "\n":
                    self.line += 1
                else:
                    chars.append(self.peek(1))
                self.i += 2
                continue
            if c in "$`" and self._expands():
                expanded = True
            if c == "\n":
                self.line += 1
            chars.append(c)
            self.i += 1


def _assignments(words: List[_Word], line: int, out: List[Assignment]) -> List[str]:
    exported = bool(words) and words[0].name is None and words[0].text == "export"
    if exported:
        words = words[1:]
    for k, w in enumerate(words):
        if w.name is not None:
            out.append(Assignment(w.name, w.text, line, w.expanded))
            continue
        if exported and _NAME.match(w.text):
            continue  # `export NAME` marks an existing variable: nothing to convert
        follows = words[k + 1] if k + 1 < len(words) else None
        if follows is not None and follows.text.startswith("=") and _NAME.match(w.text):
            return [f"line {line}: {w.text}: no spaces allowed around '=' (write {w.text}=value)"]
        if k > 0 and words[k - 1].name is not None:
            return [
                f"line {line}: {words[k - 1].name}: unexpected text after the value "
                "(quote a value that contains spaces)"
            ]
        return [f"line {line}: not a KEY=value assignment"]
    return []


# --------------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------------


def mask_to_prefix(mask: str) -> int:
    """Prefix length of a netmask: dotted (255.255.255.0) or a bare length (24 or /24).

    Raises ValueError saying what is wrong.
    """
    text = mask.strip()
    if re.fullmatch(r"/?[0-9]{1,2}", text):
        bits = int(text.lstrip("/"))
        if bits > 32:
            raise ValueError(f"{mask!r} is not a prefix length (0 to 32)")
        return bits
    try:
        value = int(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"{mask!r} is not a netmask (expected e.g. 255.255.255.0)") from None
    host_bits = ~value & 0xFFFFFFFF
    # Contiguous = ones then zeros: the host part is then 2**n - 1.
    if host_bits & (host_bits + 1):
        raise ValueError(
            f"{mask!r} is not a contiguous netmask (ones then zeros, e.g. 255.255.255.0)"
        )
    return 32 - host_bits.bit_length()


def _number(text: str) -> Optional[float]:
    return float(text) if _NUMBER.match(text.strip()) else None


def _plain_number(value: float) -> Any:
    return int(value) if value.is_integer() else value


class _Conversion:
    """One conversion under way: the file's settings (the last assignment of each name) and
    what the per-key converters made of them so far."""

    def __init__(self, source: str, assignments: List[Assignment], problems: List[str]) -> None:
        self.source = source
        self.problems = problems
        self.notes: List[str] = [f"Converted from {source} by `iscsi-cfg import-conf`."]
        self.seen: Dict[str, Assignment] = {}
        for asg in assignments:
            if asg.name in self.seen:
                self.notes.append(
                    f"line {asg.line}: {asg.name} is set again (first on line "
                    f"{self.seen[asg.name].line}); the last one wins, as in the "
                    "shell."
                )
            self.seen[asg.name] = asg
        self.handled: Set[str] = set()
        self.mapped: List[str] = []  # "OLD -> new" for the "Copied:" note
        self.top: Dict[str, Any] = {}
        self.vip: Dict[str, Any] = {}
        self.logging: Dict[str, Any] = {}
        self.address: Optional[str] = None  # the VIP, once DRBD_VIRTUAL_IP is read

    def take(self, name: str) -> Optional[Assignment]:
        """The setting ``name`` for converting its value (None when absent or not convertible:
        a value built by a shell expansion is a problem, never a guess)."""
        self.handled.add(name)
        a = self.seen.get(name)
        if a is not None and a.expanded:
            self.problems.append(
                f"line {a.line}: {name}: the value uses a shell expansion ($... "
                "or `...`) that cannot be converted; write the value itself"
            )
            return None
        return a

    def drop(self, name: str) -> Optional[Assignment]:
        """The setting ``name``, which is dropped (its value is never used, so not checked)."""
        self.handled.add(name)
        return self.seen.get(name)

    def bad(self, a: Assignment, message: str) -> None:
        self.problems.append(f"line {a.line}: {a.name}: {message}")

    def result(self) -> Tuple[Dict[str, Any], List[str]]:
        unknown = [a for n, a in self.seen.items() if n not in self.handled]
        if unknown:
            self.notes.append(
                "Left out, not settings of iscsi-ha.conf: "
                + ", ".join(f"{a.name} (line {a.line})" for a in unknown)
                + "."
            )
        if self.mapped:
            self.notes.insert(1, "Copied: " + "; ".join(self.mapped) + ".")
        data: Dict[str, Any] = {
            k: self.top[k] for k in ("interval", "cycle_deadline", "resources") if k in self.top
        }
        if self.vip:
            data["vip"] = self.vip
        if self.logging:
            data["logging"] = self.logging
        if self.problems:
            raise ConfigError(self.source, self.problems)
        try:
            parse_config(data, self.source)
        except ConfigError as exc:
            raise ConfigError(
                self.source, [f"after conversion: {p}" for p in exc.problems]
            ) from None
        return data, self.notes


def _resources(c: _Conversion) -> None:
    """DRBD_RESOURCES=iscsi1:iscsi2 -> resources."""
    a = c.take("DRBD_RESOURCES")
    if a is None:
        if "DRBD_RESOURCES" not in c.seen:
            c.problems.append(
                "DRBD_RESOURCES: is not set; it names the DRBD resources to "
                "manage, e.g. DRBD_RESOURCES=iscsi1:iscsi2"
            )
        return
    parts = [p.strip() for p in a.value.split(":")]
    names = [p for p in parts if p]
    if len(names) != len(parts) and names:
        c.notes.append(
            f"line {a.line}: DRBD_RESOURCES has empty entries between colons; they were skipped."
        )
    if not names:
        c.bad(a, "names no resource (expected e.g. iscsi1:iscsi2)")
    for rname in names:
        if not RESOURCE_NAME.match(rname) or rname in (".", ".."):
            c.bad(a, f"{rname!r} is not a DRBD resource name (letters, digits, _ . - only)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        c.bad(a, f"{', '.join(dupes)} listed more than once")
    c.top["resources"] = list(dict.fromkeys(names))
    c.mapped.append("DRBD_RESOURCES -> resources")


def _vip_address(c: _Conversion) -> None:
    """DRBD_VIRTUAL_IP + DRBD_VIRTUAL_MASK -> vip.address."""
    ip_a, mask_a = c.take("DRBD_VIRTUAL_IP"), c.take("DRBD_VIRTUAL_MASK")
    for name, got in (("DRBD_VIRTUAL_IP", ip_a), ("DRBD_VIRTUAL_MASK", mask_a)):
        if got is None and name not in c.seen:
            c.problems.append(
                f"{name}: is not set; the VIP needs DRBD_VIRTUAL_IP (e.g. "
                "10.10.10.3) and DRBD_VIRTUAL_MASK (e.g. 255.255.255.0)"
            )
    if ip_a is not None:
        try:
            c.address = str(ipaddress.IPv4Address(ip_a.value.strip()))
        except ValueError:
            c.bad(ip_a, f"{ip_a.value!r} is not an IPv4 address (expected e.g. 10.10.10.3)")
    prefix: Optional[int] = None
    if mask_a is not None:
        try:
            prefix = mask_to_prefix(mask_a.value)
            if prefix == 0:
                c.bad(
                    mask_a,
                    f"{mask_a.value!r} covers every address; use the netmask of the "
                    "VIP's subnet, e.g. 255.255.255.0",
                )
                prefix = None
        except ValueError as exc:
            c.bad(mask_a, str(exc))
    if c.address is not None and prefix is not None:
        c.vip["address"] = f"{c.address}/{prefix}"
        c.mapped.append("DRBD_VIRTUAL_IP + DRBD_VIRTUAL_MASK -> vip.address")


def _vip_interface(c: _Conversion) -> None:
    """DRBD_INTERFACE -> vip.interface."""
    a = c.take("DRBD_INTERFACE")
    if a is not None:
        if a.value.strip():
            c.vip["interface"] = a.value.strip()
            c.mapped.append("DRBD_INTERFACE -> vip.interface")
        else:
            c.bad(a, "is empty (expected the interface the VIP binds to, e.g. xenbr0)")
    elif "DRBD_INTERFACE" not in c.seen:
        c.notes.append(
            "DRBD_INTERFACE is not set: vip.interface keeps its default, xenbr0. "
            "Check that this is the interface the VIP belongs on."
        )


def _target_service(c: _Conversion) -> None:
    """ISCSI_TARGET_SERVICE: dropped, the controller runs the target daemon itself."""
    a = c.drop("ISCSI_TARGET_SERVICE")
    if a is None:
        return
    service = os.path.basename(a.value.strip()) if not a.expanded else ""
    other = "" if service == "tgtd" else " Only tgt is supported (it was not tgtd)."
    c.notes.append(
        f"line {a.line}: ISCSI_TARGET_SERVICE dropped: iscsi-ha now runs tgtd itself "
        "(`tgtd -f -C <target.control_port>`, one daemon per control port) instead of "
        "starting the tgtd system service. Disable that service (systemctl disable --now "
        f"tgtd) so that a second tgtd does not hold port 3260.{other}"
    )


def _monitor_numbers(c: _Conversion) -> Dict[str, float]:
    """The valid MONITOR_DELAY / MONITOR_MAX_STARTS / MONITOR_SCANRATE values, by name."""
    numbers: Dict[str, float] = {}
    for name, minimum in (
        ("MONITOR_DELAY", 0.0),
        ("MONITOR_MAX_STARTS", None),
        ("MONITOR_SCANRATE", 0.0),
    ):
        a = c.take(name)
        if a is None:
            continue
        num = _number(a.value)
        if num is None or (minimum is not None and num <= minimum):
            what = "a whole number" if minimum is None else "a number of seconds greater than 0"
            c.bad(a, f"{a.value!r} is not {what}")
        elif minimum is None and not num.is_integer():
            c.bad(a, f"{a.value!r} is not a whole number")
        else:
            numbers[name] = num
    return numbers


def _monitor(c: _Conversion) -> None:
    """MONITOR_DELAY -> interval; MONITOR_MAX_STARTS (with SCANRATE) -> cycle_deadline;
    MONITOR_KILLALL dropped."""
    numbers = _monitor_numbers(c)
    if "MONITOR_DELAY" in numbers:
        c.top["interval"] = _plain_number(numbers["MONITOR_DELAY"])
        c.mapped.append("MONITOR_DELAY -> interval")
    if "MONITOR_MAX_STARTS" in numbers:
        delay = numbers.get("MONITOR_DELAY", ORIGINAL_MONITOR_DELAY)
        scan = numbers.get("MONITOR_SCANRATE", ORIGINAL_MONITOR_SCANRATE)
        starts = numbers["MONITOR_MAX_STARTS"]
        deadline = delay + starts * scan
        c.top["cycle_deadline"] = _plain_number(deadline)
        assumed = [
            f"{n}={v}"
            for n, v in (
                ("MONITOR_DELAY", ORIGINAL_MONITOR_DELAY),
                ("MONITOR_SCANRATE", ORIGINAL_MONITOR_SCANRATE),
            )
            if n not in numbers
        ]
        c.notes.append(
            f"MONITOR_MAX_STARTS -> cycle_deadline: {deadline:g} s = MONITOR_DELAY "
            f"{delay:g} + MONITOR_MAX_STARTS {starts:g} x MONITOR_SCANRATE {scan:g}, the age at "
            "which the original monitor declared a run hung. A cycle longer than that is "
            "reported as an overrun (log and metrics) instead of mailed."
            + (f" Assumed the original's shipped {', '.join(assumed)}." if assumed else "")
        )
    elif "MONITOR_SCANRATE" in numbers:
        c.notes.append(
            "MONITOR_SCANRATE dropped: without MONITOR_MAX_STARTS it sets no "
            "deadline; cycle_deadline keeps its default (twice the interval)."
        )
    a = c.drop("MONITOR_KILLALL")
    if a is not None:
        c.notes.append(
            f"line {a.line}: MONITOR_KILLALL dropped: there are no hung runs to kill. Every "
            "external command has a timeout (command_timeout, 10 s by default) and is killed "
            "when it runs over, and only one cycle runs at a time."
        )


def _logging(c: _Conversion) -> None:
    """ENABLE_LOGGING -> logging.level / logging.syslog."""
    a = c.take("ENABLE_LOGGING")
    if a is None:
        return
    value = a.value.strip()
    if value == "1":
        c.logging["level"] = "info"
        c.mapped.append("ENABLE_LOGGING=1 -> logging.level: info")
    elif value == "0":
        c.logging.update(level="warning", syslog=False)
        c.notes.append(
            f"line {a.line}: ENABLE_LOGGING=0 -> logging.syslog: false, logging.level: "
            "warning. Logging cannot be switched off entirely: warnings and errors still go "
            "to the journal."
        )
    else:
        c.bad(a, f"{value!r} must be 1 (log) or 0 (do not log)")


def _mail(c: _Conversion) -> None:
    """MAIL_* / SMTP_*: dropped, alerts go through Prometheus and Alertmanager."""
    mail = [n for n in c.seen if n.startswith(_MAIL_PREFIXES)]
    c.handled.update(mail)
    if mail:
        c.notes.append(
            f"{', '.join(mail)} dropped: e-mail alerts are replaced by Prometheus alert rules "
            "routed through Alertmanager; put the mail receiver (SMTP server, sender, "
            "recipients) in alerts/alertmanager.yml. No value was copied, including any SMTP "
            "password."
        )


def _not_settings(c: _Conversion) -> None:
    """MANUAL_MODE, SERVER_ONE_IP, SERVER_TWO_IP, REPLICATION_IP_ISCSI: not configuration in
    the new model."""
    c.handled.update(_NOT_SETTINGS)
    a = c.seen.get("MANUAL_MODE")
    if a is not None and a.value.strip():
        c.notes.append(
            f"line {a.line}: MANUAL_MODE dropped: manual mode is a persisted state, "
            "not a setting; run `iscsi-cfg manual-mode-enable` on the host instead."
        )
    elif a is not None:
        c.notes.append(
            f"line {a.line}: MANUAL_MODE dropped (it was empty: automatic mode, "
            "which is the default)."
        )
    replication = [n for n in ("SERVER_ONE_IP", "SERVER_TWO_IP") if n in c.seen]
    if replication:
        c.notes.append(
            f"{' and '.join(replication)} dropped: the replication addresses belong "
            "to the DRBD resource files (/etc/drbd.d/*.res); iscsi-ha does not use "
            "them."
        )
    a = c.seen.get("REPLICATION_IP_ISCSI")
    if a is not None:
        same = c.address is not None and a.value.strip() == c.address
        c.notes.append(
            f"line {a.line}: REPLICATION_IP_ISCSI dropped: "
            + (
                "it repeats DRBD_VIRTUAL_IP."
                if same
                else "it differs from DRBD_VIRTUAL_IP; vip.address was built from DRBD_VIRTUAL_IP. "
                "Check which address the SRs use."
            )
        )


# The per-key converters, in the order their notes and problems are reported.
_CONVERTERS: Tuple[Callable[[_Conversion], None], ...] = (
    _resources,
    _vip_address,
    _vip_interface,
    _target_service,
    _monitor,
    _logging,
    _mail,
    _not_settings,
)


def convert_legacy(text: str, source: str) -> Tuple[Dict[str, Any], List[str]]:
    """Convert a legacy iscsi-ha.conf to a mapping that ``parse_config`` accepts, plus notes.

    Raises ConfigError listing every problem ("line N: KEY: what is wrong"); the result has been
    validated with ``parse_config``, so ``render_yaml`` of it loads.
    """
    assignments, problems = scan_assignments(text)
    conversion = _Conversion(source, assignments, problems)
    for convert in _CONVERTERS:
        convert(conversion)
    return conversion.result()


def load_legacy(path: Any) -> Tuple[Dict[str, Any], List[str]]:
    """Read and convert a legacy file; ConfigError when it cannot be read or converted."""
    source = os.fspath(path)
    try:
        raw = read_capped(source, CONFIG_LIMIT)  # a regular file; never a FIFO or a device
    except FileNotFoundError:
        raise ConfigError(source, ["no such file"]) from None
    except OSError as exc:
        raise ConfigError(source, [f"cannot read: {exc.strerror or exc}"]) from None
    # Old files may carry Latin-1 in MAIL_SUBJECT; what we keep is validated anyway.
    return convert_legacy(raw.decode("utf-8", errors="replace"), source)


def apply_tgt_conf(
    data: Dict[str, Any], notes: List[str], path: Any, iqn: Optional[str] = None
) -> None:
    """Carry the target of tgt-admin's ``targets.conf`` over into ``data["target"]``: its IQN,
    LUN numbers and backing stores, and each LUN's identity pinned (``serial``/``scsi_id``/
    ``vendor``/``product``) as tgt presented it, so an existing SR keeps its SCSIid. With more
    than one target, ``iqn`` chooses (else the one whose LUNs are DRBD devices). ConfigError
    names the file and what is wrong."""
    from .systems.tgt import TgtParseError, parse_targets_conf

    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            text = f.read(1 << 20).decode("utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read: {exc.strerror or exc}"]) from None
    try:
        targets = parse_targets_conf(text)
    except TgtParseError as exc:
        raise ConfigError(source, [str(exc)]) from None
    if iqn:
        chosen = [t for t in targets if t.iqn == iqn]
    elif len(targets) > 1:
        chosen = [t for t in targets if any("drbd" in lun.path for lun in t.luns)][:1]
    else:
        chosen = list(targets)
    if not chosen:
        names = ", ".join(t.iqn for t in targets) or "none"
        raise ConfigError(
            source, [f"no target to import (targets in the file: {names}); name one with --iqn"]
        )
    t = chosen[0]
    if not t.luns:
        raise ConfigError(source, [f"target {t.iqn} has no backing-store"])
    target = dict(data.get("target") or {})
    target["iqn"] = t.iqn
    target["luns"] = [
        {
            "lun": lun.number,
            "path": lun.path,
            "serial": lun.scsi_sn,
            "scsi_id": lun.scsi_id,
            "vendor": lun.vendor_id,
            "product": lun.product_id,
        }
        for lun in t.luns
    ]
    if len(t.initiator_addresses) == 1:
        target["initiator_address"] = t.initiator_addresses[0]
    elif t.initiator_addresses:
        notes.append(
            f"{source}: {len(t.initiator_addresses)} initiator-address lines; iscsi-ha "
            "binds one: set target.initiator_address to the network that holds them all"
        )
    for key, value in t.params:
        if key == "DefaultTime2Wait" and value.isdigit():
            target["default_time2wait"] = int(value)
    data["target"] = target
    others = [x.iqn for x in targets if x is not t]
    notes.append(
        f"From {source}: target {t.iqn} (tid {t.tid} there) with LUN(s) "
        f"{', '.join(str(lun.number) for lun in t.luns)}; each LUN's serial and "
        "scsi_id pinned as tgt presented them (the SR's SCSIid is kept)."
        + (f" Not imported: {', '.join(others)}." if others else "")
    )
    for item in t.ignored:
        notes.append(f"{source}: {item} not carried over (CHAP is not configured by iscsi-ha)")
    try:
        parse_config(data, source)
    except ConfigError as exc:
        raise ConfigError(source, [f"after import: {p}" for p in exc.problems]) from None


def render_yaml(data: Dict[str, Any], notes: List[str]) -> str:
    """The converted settings as YAML, with the notes as comments on top."""
    lines = [
        "# iscsi-ha configuration converted from the legacy iscsi-ha.conf.",
        "# Every key not set below has its default; examples/iscsi-ha.yaml shows them all.",
        "#",
    ]
    for note in notes:
        # textwrap turns newlines into spaces, so a note cannot break out of its comment.
        for k, chunk in enumerate(textwrap.wrap(note, width=96) or [""]):
            lines.append(("# - " if k == 0 else "#   ") + chunk)
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    return "\n".join(lines) + "\n\n" + body
