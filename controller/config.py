"""Configuration: one YAML file, checked whole before anything is touched.

An HA daemon that starts with a half-understood configuration is worse than one that does not
start: a typo in ``vip.adress`` silently left at its default would bind the wrong address on the
wrong host. So every key is known (an unknown one is an error, with a "did you mean" hint), every
value is type-checked the way YAML actually parses it (``interval: yes`` is a boolean, not a
number; ``tid: true`` is not an int even though Python says ``bool`` is one), and *all* problems are
collected and reported together, one per line, as ``FILE: key.path: what is wrong (how to fix it)``.
An operator fixes the file once, not once per error.

The schema lives in the frozen dataclasses below, one ``setting()`` per key: the field name is
the YAML key, the field default the documented default, and the field carries its check and its
help. ``examples/iscsi-ha.yaml`` and the README's table are generated from these fields
(``make docs``; a test fails when they drift). Three defaults are derived: ``node_name`` (the host
name), ``cycle_deadline`` (twice the interval) and ``target.luns`` (one LUN per resource, in
order).

The XenAPI password is deliberately *not* part of ``Config``: a config object gets logged, dumped
by ``iscsi-cfg get`` and sent over the control socket, and a secret that is never in it cannot leak
from it. ``read_xenapi_password()`` fetches it (environment first, then the file) at the moment of
logging in. Error messages never quote the value of an unknown key, for the same reason: a
misplaced ``password: ...`` must not end up in a journal.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import socket
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import yaml

from .files import CONFIG_LIMIT, SMALL_LIMIT, read_capped

DEFAULT_CONFIG_PATH = "/etc/iscsi-ha/iscsi-ha.yaml"
# The exporter work owns the final choice of port; every default and message derives from this.
DEFAULT_EXPORTER_PORT = 19856
DEFAULT_PEER_PORT = 19857  # the peer channel (controller/peer.py), next to the exporter's
DEFAULT_INTERVAL = 5.0  # seconds between cycles; iscsi-cfg also uses it when no config is readable
# target.restart_backoff doubles after each failed restart, up to this ceiling.
MAX_RESTART_BACKOFF = 300.0
# Every duration lies in this range unless its key says otherwise: longer than an hour is a typo
# for every setting here, and the scheduler, timedelta and select() overflow on huge values.
MIN_SECONDS = 0.01
MAX_SECONDS = 3600.0
MAX_PERIOD = 86400.0  # the periodic jobs (gratuitous ARP, VIP probe) may be up to a day apart
MAX_UID = 2**32 - 2  # (uid_t)-1 means "no user"
MAX_TID = 65535
MAX_LUN = 16383  # the flat LUN space of SAM addressing
MAX_ANNOUNCE_COUNT = 100

RESOURCE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
# RFC 3720 section 3.2.6.3.1: "iqn." + year-month the naming authority owned its domain + "." +
# the reversed domain name, then optionally ":" and a unique string. Names are compared after
# stringprep, which lower-cases them, so we insist on lower case up front.
_IQN = re.compile(
    r"^iqn\.\d{4}-(0[1-9]|1[0-2])"
    r"\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*"
    r"(:[a-z0-9.:-]+)?$"
)
_IQN_MAX_BYTES = 223  # RFC 3720: iSCSI names are at most 223 bytes
_IFNAMSIZ = 15  # Linux interface names: at most 15 characters


class ConfigError(Exception):
    """An invalid or unreadable configuration.

    ``problems`` holds one "key.path: what is wrong" entry per problem; ``str()`` puts the file in
    front of each, one per line, ready for the log or the terminal.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems: Tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))


# --------------------------------------------------------------------------------------------
# Value checks: each returns the clean value or raises _Invalid with what is wrong and the fix
# --------------------------------------------------------------------------------------------


class _Invalid(Exception):
    """One or more problems with a value, as (sub-path suffix, message) pairs."""

    def __init__(self, message: str = "", problems: Optional[List[Tuple[str, str]]] = None):
        super().__init__(message)
        self.problems = problems if problems is not None else [("", message)]


Check = Callable[[Any], Any]


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if value is None:
        return "nothing (null)"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int):
        return f"the integer {_show_int(value)}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _type_hint(value: Any, wanted: str) -> str:
    """A fix for the usual YAML surprises, to append to a type error."""
    if isinstance(value, bool) and wanted != "bool":
        return " (in YAML yes/no/on/off/true/false are booleans)"
    if isinstance(value, str) and wanted in ("number", "int"):
        try:
            float(value)
            return " (remove the quotes: a quoted value is a string)"
        except ValueError:
            return ""
    if (
        isinstance(value, str)
        and wanted == "bool"
        and value.lower() in ("true", "false", "yes", "no", "on", "off")
    ):
        return " (remove the quotes: a quoted value is a string)"
    if isinstance(value, int) and not isinstance(value, bool) and wanted == "bool":
        return " (write true or false)"
    if isinstance(value, float) or (isinstance(value, int) and value.bit_length() <= 64):
        if wanted == "str":
            return f" (quote it: '{value}')"
    return ""


def _seconds(
    allow_zero: bool = False, maximum: float = MAX_SECONDS, minimum: float = MIN_SECONDS
) -> Check:
    """A duration in seconds, within a range that a scheduler, ``select()`` and ``timedelta``
    can all hold: 1e308 is a finite float, and used to pass here and then kill the daemon."""

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(
                f"must be a number of seconds, got {_describe(value)}" + _type_hint(value, "number")
            )
        if isinstance(value, int) and abs(value) > 10**12:
            raise _Invalid(f"must be at most {maximum:g} seconds, got {_describe(value)}")
        if not math.isfinite(value):
            raise _Invalid(f"must be a finite number of seconds, got {value!r}")
        if allow_zero and value < 0:
            raise _Invalid(f"must be 0 (off) or more, got {value!r}")
        if not allow_zero and value <= 0:
            raise _Invalid(f"must be greater than 0, got {value!r}")
        if value and value < minimum:
            raise _Invalid(f"must be at least {minimum:g} seconds, got {value!r}")
        if value > maximum:
            raise _Invalid(
                f"must be at most {maximum:g} seconds ({_words(maximum)}), got {value!r}"
            )
        return float(value)

    return check


def _words(seconds: float) -> str:
    if seconds >= 86400 and seconds % 86400 == 0:
        n = int(seconds // 86400)
        return f"{n} day{'s' if n != 1 else ''}"
    if seconds >= 3600 and seconds % 3600 == 0:
        n = int(seconds // 3600)
        return f"{n} hour{'s' if n != 1 else ''}"
    return f"{seconds:g} s"


def _integer(minimum: int, maximum: int, why: str = "") -> Check:
    def check(value: Any) -> int:
        # bool is an int subclass in Python; in a config file `true` is never meant as 1.
        if isinstance(value, bool) or not isinstance(value, int):
            hint = _type_hint(value, "int")
            if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
                hint = f" (write {int(value)})"
            raise _Invalid(f"must be an integer, got {_describe(value)}{hint}")
        if value < minimum:
            raise _Invalid(f"must be {minimum} or more, got {_show_int(value)}")
        if value > maximum:
            raise _Invalid(f"must be {maximum} or less, got {_show_int(value)}{why}")
        return value

    return check


def _show_int(value: int) -> str:
    """An integer for a message; a huge one by its size (str() of 5,000 digits raises)."""
    if value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    return str(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {_describe(value)}" + _type_hint(value, "bool"))
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, got {_describe(value)}" + _type_hint(value, "str"))
    if not value.strip():
        raise _Invalid("must not be empty")
    if any(ord(c) < 32 for c in value):
        raise _Invalid("must not contain control characters (tabs, newlines)")
    return value


def _command(value: Any) -> str:
    text = _string(value)
    if any(c.isspace() for c in text):
        raise _Invalid(
            f"{text!r} is run without a shell: give one command name or path, without arguments"
        )
    return text


def _path(value: Any) -> str:
    text = _string(value)
    if not os.path.isabs(text):
        raise _Invalid(f"{text!r} must be an absolute path (starting with /)")
    return text


class _Optional:
    """A check that also takes null (YAML's ``null`` / ``~``): the reader passes it None."""

    nullable = True

    def __init__(self, check: Check) -> None:
        self.check = check

    def __call__(self, value: Any) -> Any:
        return None if value is None else self.check(value)


def _optional(check: Check) -> Check:
    return _Optional(check)


def _choice(options: Sequence[str], lower: bool = True) -> Check:
    def check(value: Any) -> str:
        text = _string(value)
        key = text.lower() if lower else text
        if key not in options:
            close = difflib.get_close_matches(key, options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _Invalid(f"{text!r} must be one of {', '.join(options)}{hint}")
        return key

    return check


def _list_of(item: Check, what: str, example: str, unique: bool = False) -> Check:
    def check(value: Any) -> Tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(f"must be a list of {what}, e.g. {example}; got {_describe(value)}")
        if not value:
            raise _Invalid(f"must list at least one of {what}, e.g. {example}")
        problems: List[Tuple[str, str]] = []
        out: List[Any] = []
        first: Dict[Any, int] = {}
        for i, raw in enumerate(value):
            try:
                clean = item(raw)
            except _Invalid as exc:
                problems.extend((f"[{i}]{sub}", msg) for sub, msg in exc.problems)
                continue
            if unique and clean in first:
                problems.append((f"[{i}]", f"{clean!r} is already listed at [{first[clean]}]"))
                continue
            first.setdefault(clean, i)
            out.append(clean)
        if problems:
            raise _Invalid(problems=problems)
        return tuple(out)

    return check


def _resource_name(value: Any) -> str:
    name = _string(value)
    # "." and ".." match the character set but would walk out of /dev/drbd/by-res/.
    if not RESOURCE_NAME.match(name) or name in (".", ".."):
        raise _Invalid(f"{name!r} is not a DRBD resource name (letters, digits, _ . - only)")
    return name


def _drbd_version(value: Any) -> str:
    # `version: 9` and `version: 8.4` parse as numbers in YAML; both are clearly meant.
    if value == 9 and not isinstance(value, bool):
        return "9"
    if isinstance(value, float) and value == 8.4:
        return "8.4"
    if isinstance(value, str) and value in ("auto", "8.4", "9"):
        return value
    raise _Invalid(
        f'must be auto, "8.4" or "9", got {_describe(value)} (use "9" for every DRBD 9.x)'
    )


def _kernel_log(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        raise _Invalid(
            f"must be a command as a list of arguments, e.g. [{value}] or "
            '[journalctl, -k, -n, "1000"]'
        )
    return _list_of(_string, "arguments", "[dmesg]")(value)


def _xenapi_url(value: Any) -> str:
    text = _string(value)
    if text == "local":
        return text
    parts = urlsplit(text)
    if parts.username is not None or parts.password is not None:
        # Do not echo the URL: it holds a credential.
        raise _Invalid(
            "must not contain a user or password: use xenapi.username and "
            "xenapi.password_file / xenapi.password_env"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(
            f"{text!r} is neither 'local' (the xapi socket) nor an http(s) URL, "
            "e.g. https://xcp-host1"
        )
    return text


def _secret(check: Check, wanted: str) -> Check:
    """A key whose value may be the password itself, typed in the wrong place: a problem with it
    is described without a single character of the value."""

    def secret(value: Any) -> Any:
        try:
            return check(value)
        except _Invalid:
            raise _Invalid(
                f"must be {wanted}; the value is not shown, in case it is the "
                "password itself (if so, change that password)"
            ) from None

    return secret


def _env_name(value: Any) -> str:
    text = _string(value)
    if not _ENV_NAME.match(text):
        raise _Invalid(f"{text!r} is not an environment variable name (letters, digits, _)")
    return text


def _iqn(value: Any) -> str:
    text = _string(value)
    fix = "(expected iqn.YYYY-MM.reversed.domain[:name], e.g. iqn.2024-01.org.iscsi-ha:storage)"
    if text != text.lower() and _IQN.match(text.lower()):
        raise _Invalid(f"{text!r} must be lower case (iSCSI names are compared lower-cased)")
    if not _IQN.match(text):
        raise _Invalid(f"{text!r} is not an iSCSI qualified name {fix}")
    if len(text.encode()) > _IQN_MAX_BYTES:
        raise _Invalid(
            f"is {len(text.encode())} bytes long; iSCSI names are at most {_IQN_MAX_BYTES}"
        )
    return text


def _initiator_address(value: Any) -> str:
    text = _string(value)
    if text == "ALL":
        return text
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        hint = " (write ALL in capitals)" if text.lower() == "all" else ""
        raise _Invalid(
            f"{text!r} must be ALL, an IP address or a network like 10.10.10.0/24" + hint
        ) from None
    return text


def _interface(value: Any) -> str:
    text = _string(value)
    if (
        len(text) > _IFNAMSIZ
        or "/" in text
        or any(c.isspace() for c in text)
        or text in (".", "..")
    ):
        raise _Invalid(
            f"{text!r} is not a network interface name (at most {_IFNAMSIZ} "
            "characters, no / or spaces)"
        )
    return text


def _vip_address(value: Any) -> str:
    example = "e.g. 10.10.10.3/24"
    if not isinstance(value, str):
        raise _Invalid(
            f"must be an IPv4 interface ADDRESS/PREFIX ({example}), got {_describe(value)}"
        )
    text = value.strip()
    if "/" not in text:
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            pass
        else:
            raise _Invalid(
                f"{value!r} has no prefix length: write it as ADDRESS/PREFIX, "
                f"e.g. {text}/24 for the netmask 255.255.255.0"
            )
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError:
        raise _Invalid(
            f"{value!r} is not an IPv4 interface (expected ADDRESS/PREFIX, {example})"
        ) from None
    net = iface.network
    if net.prefixlen == 0:
        raise _Invalid(
            f"{value!r}: a /0 prefix covers every address; use the prefix of the "
            "VIP's subnet, e.g. /24"
        )
    if net.prefixlen <= 30 and iface.ip in (net.network_address, net.broadcast_address):
        which = "network" if iface.ip == net.network_address else "broadcast"
        raise _Invalid(f"{value!r} is the {which} address of {net}, not a host address")
    if iface.ip.is_loopback or iface.ip.is_multicast or iface.ip.is_unspecified:
        raise _Invalid(f"{value!r} cannot be a floating address (loopback, multicast or 0.0.0.0)")
    # Normalised, so "10.10.10.3/255.255.255.0" and "10.10.10.3/24" are the same config.
    return f"{iface.ip}/{net.prefixlen}"


def _listen(value: Any) -> str:
    text = _string(value)
    port_ = DEFAULT_EXPORTER_PORT
    fix = f"expected HOST:PORT, e.g. 0.0.0.0:{port_} or [::]:{port_}"
    host, sep, port = text.rpartition(":")
    if not sep:
        raise _Invalid(f"{text!r} has no port ({fix})")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _Invalid(f"{text!r}: the port must be a number from 1 to 65535 ({fix})")
    if host.startswith("[") or host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1] if host[:1] == "[" and host[-1:] == "]" else "!")
        except ValueError:
            raise _Invalid(
                f"{text!r}: {host!r} is not an IPv6 address in brackets ({fix})"
            ) from None
    elif ":" in host:
        raise _Invalid(f"{text!r}: put an IPv6 address in brackets ({fix})")
    elif host and not _HOSTNAME.match(host):
        raise _Invalid(f"{text!r}: {host!r} is not a host name or address ({fix})")
    return text


def _peer_address(value: Any) -> str:
    """The peer's management address or host name; "" turns the peer channel off."""
    if value == "" or value is None:
        return ""
    text = _string(value)
    if not _HOSTNAME.match(text):
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise _Invalid(
                f"{text!r} is not a host name or address (the other host's management "
                'address, e.g. 10.0.0.2; "" for no peer channel)'
            ) from None
    return text


def _uid(value: Any) -> int:
    return _integer(0, MAX_UID)(value)


_IDENTITY_KEYS = {
    # key: (maximum length, what it is, characters allowed): tgt takes them in a comma-separated
    # --params list, so ',' and '=' never; LIO's serial is a configfs line.
    "serial": (36, "the unit serial (VPD 0x80)", re.compile(r"^[A-Za-z0-9._:-]+$")),
    "scsi_id": (36, "tgt's scsi_id (its NAA designator, VPD 0x83)", re.compile(r"^[ -+\--<>-~]+$")),
    "vendor": (8, "the T10 vendor id", re.compile(r"^[ -+\--<>-~]+$")),
    "product": (16, "the product id", re.compile(r"^[ -+\--<>-~]+$")),
}


def _identity(key: str) -> Check:
    limit, what, allowed = _IDENTITY_KEYS[key]

    def check(value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool) and key == "serial":
            value = str(value)
        text = _string(value)
        if len(text) > limit or not allowed.match(text):
            raise _Invalid(
                f"{what} must be 1..{limit} printable ASCII characters without ',' "
                f"or '=' (got {text[:60]!r})"
            )
        return text

    return check


def _lun_entry(value: Any) -> Lun:
    if not isinstance(value, dict):
        raise _Invalid(
            f"must be a mapping like {{lun: 1, path: /dev/drbd/by-res/iscsi1/0}}, "
            f"got {_describe(value)}"
        )
    problems: List[Tuple[str, str]] = []
    fields = {yaml_key(f): f for f in dataclasses.fields(Lun)}
    for key in value:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "known here: " + ", ".join(fields)
            problems.append((f".{key}", f"unknown key; {hint}"))
    values: Dict[str, Any] = {}
    for key, f in fields.items():
        if key not in value:
            if f.default is dataclasses.MISSING:
                problems.append((f".{key}", "is required"))
            continue
        try:
            values[f.name] = check_of(f)(value[key])
        except _Invalid as exc:
            problems.extend((f".{key}{sub}", msg) for sub, msg in exc.problems)
    if problems:
        raise _Invalid(problems=problems)
    return Lun(**values)


def _luns(value: Any) -> Tuple[Lun, ...]:
    entries = _list_of(_lun_entry, "LUNs", "[{lun: 1, path: /dev/drbd/by-res/iscsi1/0}]")(value)
    problems: List[Tuple[str, str]] = []
    numbers: Dict[int, int] = {}
    paths: Dict[str, int] = {}
    for i, lun in enumerate(entries):
        number, path = lun.number, lun.path
        if number in numbers:
            problems.append((f"[{i}].lun", f"LUN {number} is already used by [{numbers[number]}]"))
        if path in paths:
            problems.append((f"[{i}].path", f"{path!r} is already exported by [{paths[path]}]"))
        numbers.setdefault(number, i)
        paths.setdefault(path, i)
    if problems:
        raise _Invalid(problems=problems)
    return tuple(entries)


# --------------------------------------------------------------------------------------------
# The schema: every key once, with its default, its check and its help
# --------------------------------------------------------------------------------------------
#
# A key is a dataclass field made by ``setting()``: the field name is the YAML key, the field
# default is the documented default, and the metadata carries the check and the help. Nothing
# else lists keys: the reader below, ``iscsi-cfg get``, the README's table and
# examples/iscsi-ha.yaml (both generated by scripts/gen_docs.py) all walk these fields.


def setting(
    default: Any = dataclasses.MISSING,
    *,
    check: Check,
    help: str,
    default_factory: Any = dataclasses.MISSING,
    derived: str = "",
    example: str = "",
) -> Any:
    """One configuration key with a default.

    ``help`` is what an operator reads (README table, example file); ``derived`` names a default
    computed from other keys (the example then shows ``example`` commented out, not a default).
    """
    meta = about(check=check, help=help, derived=derived, example=example)
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def about(
    *, check: Check, help: str, derived: str = "", example: str = "", key: str = ""
) -> Dict[str, Any]:
    """The metadata of a key; a required key is ``field(metadata=about(...))`` (mypy sees a
    ``field()`` without a default as required). ``example`` is the value the example file shows
    for it; ``key`` is the YAML name when it is not the field name (a LUN's ``lun``)."""
    return {"check": check, "help": help, "derived": derived, "example": example, "key": key}


def _identity_setting(name: str) -> Any:
    limit, what, _allowed = _IDENTITY_KEYS[name]
    return setting(
        None,
        check=_optional(_identity(name)),
        help=f"{what}, at most {limit} characters; default: derived",
    )


@dataclass(frozen=True)
class Lun:
    """One entry of ``target.luns``."""

    number: int = field(
        metadata=about(
            key="lun",
            check=_integer(1, MAX_LUN),
            help=f"the LUN number, 1..{MAX_LUN} (0 is the target's own controller LUN)",
        )
    )
    path: str = field(metadata=about(check=_path, help="the block device it serves"))
    # The identity initiators see; None = derived from the IQN and the LUN number (equal on both
    # hosts). Pinned by import-conf --tgt-conf from an existing tgt setup (scsi_sn, scsi_id).
    serial: Optional[str] = _identity_setting("serial")
    scsi_id: Optional[str] = _identity_setting("scsi_id")
    vendor: Optional[str] = _identity_setting("vendor")
    product: Optional[str] = _identity_setting("product")


@dataclass(frozen=True)
class DrbdConfig:
    version: str = setting(
        "auto",
        check=_drbd_version,
        help='DRBD userland to speak: auto (detected from /proc/drbd), "8.4" or "9".',
    )
    drbdadm: str = setting(
        "drbdadm",
        check=_command,
        help="The drbdadm command: a name or an absolute path, run without a shell.",
    )
    drbdsetup: str = setting(
        "drbdsetup", check=_command, help="The drbdsetup command: a name or an absolute path."
    )
    proc_drbd: str = setting(
        "/proc/drbd", check=_path, help="Where DRBD's kernel module reports its version and states."
    )
    kernel_log: Tuple[str, ...] = setting(
        ("dmesg",),
        check=_kernel_log,
        help="Command (a list of arguments) whose output is searched for the kernel's "
        '"Split-Brain detected but unresolved"; [journalctl, -k, -b, -o, cat] keeps the '
        "whole boot.",
    )


@dataclass(frozen=True)
class PoolConfig:
    conf: str = setting(
        "/etc/xensource/pool.conf",
        check=_path,
        help='Where XenServer / XCP-ng writes this host\'s pool role ("master" '
        'or "slave:ADDRESS").',
    )


_PASSWORD_FILE = _optional(
    _secret(
        _path,
        "an absolute path to the file that holds the password, e.g. /etc/iscsi-ha/xapi-password",
    )
)
_PASSWORD_ENV = _optional(
    _secret(
        _env_name, "an environment variable name (letters, digits, _), e.g. ISCSI_HA_XAPI_PASSWORD"
    )
)


@dataclass(frozen=True)
class XenApiConfig:
    enabled: bool = setting(
        True, check=_boolean, help="false: no XenAPI at all (no SR plugging, no SR or VM evidence)."
    )
    url: str = setting(
        "local",
        check=_xenapi_url,
        help='"local" logs in over the xapi Unix socket below; or https://HOST '
        "(http:// only for labs). Never put a user or password in the URL.",
    )
    socket: str = setting("/var/lib/xcp/xapi", check=_path, help="The xapi Unix socket.")
    username: str = setting("root", check=_string, help="The XenAPI user.")
    password_file: Optional[str] = setting(
        "/etc/iscsi-ha/xapi-password",
        check=_PASSWORD_FILE,
        help="The file that holds the password (mode 0600, owned by root; one line); null = "
        "none. The password itself never goes in this configuration and is never printed.",
    )
    password_env: Optional[str] = setting(
        "ISCSI_HA_XAPI_PASSWORD",
        check=_PASSWORD_ENV,
        help="The environment variable that holds the password; when it is set and not empty "
        "it wins over password_file. null = none.",
    )
    timeout: float = setting(
        10.0,
        check=_seconds(),
        help="Seconds every XenAPI call may take; the XenAPI SDK has no timeout of its own.",
    )
    verify_tls: bool = setting(
        False, check=_boolean, help="Check the https certificate; XenServer ships self-signed ones."
    )
    plug_srs: bool = setting(
        True,
        check=_boolean,
        help="On the master, plug the unattached PBDs of lvmoiscsi SRs once the target serves.",
    )


_LUNS_EXAMPLE = """\
luns:
  - {lun: 1, path: /dev/drbd/by-res/iscsi1/0}
  - {lun: 2, path: /dev/drbd/by-res/iscsi2/0}"""


@dataclass(frozen=True)
class TargetConfig:
    backend: str = setting(
        "auto",
        check=_choice(("auto", "lio", "tgt")),
        help="Which daemon serves the LUNs: lio (the kernel target), tgt (user space), or auto: "
        "LIO when it is loaded, or when tgtd is not installed and the kernel has LIO's modules "
        "(the XCP-ng 8.3 / XenServer 8 dom0 has them); else tgt. See the README's \"Choosing a "
        'target backend".',
    )
    default_time2wait: int = setting(
        2,
        check=_integer(0, 3600, " (iSCSI allows 0..3600 seconds)"),
        help="Seconds an initiator waits before it reconnects after a lost connection or a "
        "logout (iSCSI DefaultTime2Wait, offered by the target: tgt --name DefaultTime2Wait, "
        "LIO tpgt_1/param/DefaultTime2Wait; 2 is what both offer by default).",
    )
    configfs: str = setting(
        "/sys/kernel/config", check=_path, help="LIO: where configfs is mounted."
    )
    modprobe: str = setting(
        "modprobe",
        check=_command,
        help="LIO: the command that loads the kernel target's modules when they are missing.",
    )
    tgtadm: str = setting("tgtadm", check=_command, help="tgt: the tgtadm command.")
    tgtd: str = setting("tgtd", check=_command, help="tgt: the tgtd command.")
    control_port: int = setting(
        0,
        check=_integer(0, 32767, " (tgtadm -C accepts 0..32767)"),
        help="tgt: the tgtd instance (tgtd -C N / tgtadm -C N); its control socket is "
        "/var/run/tgtd/socket.N.",
    )
    tid: int = setting(1, check=_integer(1, MAX_TID), help="The target id.")
    iqn: str = setting(
        "iqn.2024-01.org.iscsi-ha:storage",
        check=_iqn,
        help="The target's iSCSI qualified name: iqn.YYYY-MM.reversed.domain[:name], lower case.",
    )
    initiator_address: str = setting(
        "ALL",
        check=_initiator_address,
        help="Who may log in: ALL, an address or a network such as 10.10.10.0/24 (LIO: ALL only).",
    )
    luns: Tuple[Lun, ...] = setting(
        (),
        check=_luns,
        derived="one LUN per resource, in order, LUN 1 upwards at /dev/drbd/by-res/RESOURCE/0",
        example=_LUNS_EXAMPLE,
        help="The LUNs of the target. Each LUN's identity (unit serial, NAA designator) is "
        "derived from the IQN and the LUN number, the same on both hosts; pin it to keep an "
        "existing SR's SCSIid (import-conf --tgt-conf does).",
    )
    stop_timeout: float = setting(
        5.0,
        check=_seconds(),
        help="Seconds to wait for tgtd to exit after `tgtadm --mode "
        "system --op delete` (then SIGKILL).",
    )
    restart_backoff: float = setting(
        2.0,
        check=_seconds(maximum=MAX_RESTART_BACKOFF),
        help="Seconds before restarting a tgtd that died where it should run; doubles after each "
        f"failed restart, up to {MAX_RESTART_BACKOFF:g}.",
    )
    log_file: Optional[str] = setting(
        None, check=_optional(_path), help="Where tgtd's output goes; null discards it."
    )


@dataclass(frozen=True)
class VipConfig:
    address: str = field(
        metadata=about(
            check=_vip_address,
            example="10.10.10.3/24",
            help="The floating IPv4 address the initiators (the SRs) connect to, with the "
            "prefix of "
            "its subnet (ADDRESS/PREFIX). A bare address is an error.",
        )
    )
    interface: str = setting(
        "xenbr0", check=_interface, help="The interface it is bound to on the holder."
    )
    ip: str = setting("ip", check=_command, help="The iproute2 ip command.")
    arping: str = setting(
        "arping",
        check=_command,
        help="iputils arping (not the Habets arping package: its exit codes differ).",
    )
    announce_interval: float = setting(
        60.0,
        check=_seconds(allow_zero=True, maximum=MAX_PERIOD),
        help="Seconds between periodic gratuitous ARPs sent by the holder; 0 = off.",
    )
    announce_count: int = setting(
        2, check=_integer(1, MAX_ANNOUNCE_COUNT), help="Gratuitous ARPs per announcement."
    )
    probe_interval: float = setting(
        10.0,
        check=_seconds(maximum=MAX_PERIOD),
        help="Seconds between duplicate-address probes (arping -D) for the VIP.",
    )
    own_sessions_wait: float = setting(
        30.0,
        check=_seconds(allow_zero=True, maximum=MAX_PERIOD),
        help="This host's own iSCSI connections to the VIP (its PBD) hang after a move until "
        "TCP's backoff or open-iscsi's NOP-Out timer (10 s) ends them; iscsi-ha ends them (ss "
        "-K) when the target serves again: at once on the new holder, on the old one when "
        "the VIP answers from it, waiting at most this many seconds. 0 = leave them.",
    )
    ss: str = setting(
        "ss", check=_command, help="The iproute2 ss command (ends those connections)."
    )

    @property
    def bare_address(self) -> str:
        """The address without its prefix ("10.10.10.3"), as arping wants it."""
        return self.address.split("/", 1)[0]

    @property
    def prefixlen(self) -> int:
        return int(self.address.split("/", 1)[1])


@dataclass(frozen=True)
class PathsConfig:
    state_dir: str = setting(
        "/etc/iscsi-ha/state",
        check=_path,
        help="Manual mode and the promotion ledger are persisted here.",
    )
    status_file: str = setting(
        "/etc/iscsi-ha/state/status",
        check=_path,
        help="The legacy status file; HA-Lizard reads its age before it fences the peer.",
    )
    control_socket: str = setting(
        "/run/iscsi-ha/control.sock", check=_path, help="Where iscsi-cfg talks to the controller."
    )


@dataclass(frozen=True)
class ExporterConfig:
    enabled: bool = setting(True, check=_boolean, help="Serve Prometheus metrics over HTTP.")
    listen: str = setting(
        f"0.0.0.0:{DEFAULT_EXPORTER_PORT}",
        check=_listen,
        help="HOST:PORT of the metrics endpoint ([::]:PORT for IPv6).",
    )
    web_config_file: Optional[str] = setting(
        None,
        check=_optional(_path),
        help="A Prometheus exporter-toolkit web configuration file (TLS, client certificates, "
        "basic auth with bcrypt hashes); null = plain HTTP.",
    )

    @property
    def host(self) -> str:
        """The listen host without IPv6 brackets; "" means every interface."""
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


@dataclass(frozen=True)
class LoggingConfig:
    level: str = setting(
        "info",
        check=_choice(("debug", "info", "warning", "error")),
        help="debug, info, warning or error. Logs always go to stderr.",
    )
    syslog: bool = setting(
        True, check=_boolean, help="Also log to syslog (/dev/log) when it exists."
    )


@dataclass(frozen=True)
class ControlConfig:
    allowed_uids: Tuple[int, ...] = setting(
        (0,),
        check=_list_of(_uid, "user ids", "[0]"),
        help="User ids allowed on the control socket (iscsi-cfg).",
    )


@dataclass(frozen=True)
class PromotionConfig:
    unproven_wait: float = setting(
        0.0,
        check=_seconds(allow_zero=True),
        help="Never serve stale data: with the peer unreachable the controller promotes only "
        "with proof that this host holds the newest data (it watched the peer vanish while in "
        "sync, or the peer is Outdated); otherwise it holds and pages (IscsiHaPromotionBlocked). "
        "This is the number of seconds after which it promotes WITHOUT proof, like DRBD's "
        "degr-wfc-timeout; 0 = never. RISK: a host that was down while its peer served writes "
        "then serves its old data: the VMs go back in time, and DRBD reports a split brain when "
        "the peer returns. Leave at 0 unless losing those writes is acceptable.",
    )


@dataclass(frozen=True)
class PeerConfig:
    """The peer channel: mutually authenticated TLS between the two controllers (peer.py)."""

    address: str = setting(
        "",
        check=_peer_address,
        help="The peer channel: mutually authenticated TLS between the two controllers over the "
        "management network (never the replication link), used by the fence-peer handler, the "
        "two-masters check and to learn the peer's disk state. This is the other host's "
        'management address; "" = no peer channel.',
    )
    port: int = setting(
        DEFAULT_PEER_PORT, check=_integer(1, 65535), help="The port the peer listens on."
    )
    listen: str = setting(
        f"0.0.0.0:{DEFAULT_PEER_PORT}",
        check=_listen,
        help="HOST:PORT this host's peer channel listens on.",
    )
    cert_file: str = setting(
        "/etc/iscsi-ha/peer/host.crt",
        check=_path,
        help="This host's certificate (create it with `iscsi-cfg peer-cert`).",
    )
    key_file: str = setting(
        "/etc/iscsi-ha/peer/host.key", check=_path, help="This host's private key (0600)."
    )
    peer_cert_file: str = setting(
        "/etc/iscsi-ha/peer/peer.crt",
        check=_path,
        help="The peer's certificate: the only one accepted (pinned).",
    )
    timeout: float = setting(
        2.0, check=_seconds(maximum=30), help="Seconds every call may take, connect to answer."
    )

    @property
    def enabled(self) -> bool:
        return bool(self.address)


@dataclass(frozen=True)
class ProbeConfig:
    """The storage probe (probe.py): this host as an iSCSI client of the VIP."""

    enabled: bool = setting(
        True,
        check=_boolean,
        help="Check the storage as the VMs' hosts see it: log in to the target at the VIP and "
        "read block 0 of every LUN, on a job of its own (never in a cycle or a scrape). Its "
        "metrics decide what pages (alerts/iscsi-ha.rules.yml, docs/alerts.md).",
    )
    interval: float = setting(
        0.0,
        check=_seconds(allow_zero=True, maximum=MAX_PERIOD),
        help="Seconds between probes; 0 = the cycle interval.",
    )
    timeout: float = setting(
        2.0,
        check=_seconds(maximum=30),
        help="Hard limit in seconds for a whole probe (connect, login, every LUN, logout); "
        "never more than the interval.",
    )
    port: int = setting(
        3260, check=_integer(1, 65535), help="The iSCSI port the target listens on at the VIP."
    )


@dataclass(frozen=True)
class AuditConfig:
    """The data-safety audit (audit.py): settings that decide whether a failover loses data."""

    enabled: bool = setting(
        True,
        check=_boolean,
        help="Check every few minutes, on a job of its own: DRBD protocol C, split-brain "
        "policies that discard data, fencing with a fence-peer handler, the LVM filter "
        "rejecting the DRBD and backing devices, multipath leaving DRBD alone. Each finding is a "
        "metric and an alert (docs/runbook.md).",
    )
    interval: float = setting(
        300.0, check=_seconds(maximum=MAX_PERIOD), help="Seconds between audits."
    )
    lvmconfig: str = setting(
        "lvmconfig", check=_command, help="LVM's lvmconfig command (dom0 has it)."
    )
    multipath_conf: str = setting(
        "/etc/multipath.conf",
        check=_path,
        help="multipath's configuration; the conf.d directory next to it "
        "(/etc/multipath/conf.d) is read too. No file: multipath is not configured.",
    )


def default_luns(resources: Sequence[str]) -> Tuple[Lun, ...]:
    return tuple(Lun(i + 1, f"/dev/drbd/by-res/{name}/0") for i, name in enumerate(resources))


@dataclass(frozen=True)
class Config:
    """The whole configuration. Build it with ``load_config`` / ``parse_config``.

    Constructing it directly (in tests) skips validation but still fills the derived defaults.
    """

    resources: Tuple[str, ...] = field(
        metadata=about(
            check=_list_of(_resource_name, "DRBD resource names", "[iscsi1, iscsi2]", unique=True),
            example="[iscsi1]",
            help="The DRBD resources to keep Primary on the pool master, in order. Names as in "
            "/etc/drbd.d/*.res (letters, digits, _ . -), each once.",
        )
    )
    vip: VipConfig = field()
    node_name: str = setting(
        default_factory=socket.gethostname,
        check=_string,
        derived="the host name",
        example="xcp-host1",
        help="Shown in logs and metrics.",
    )
    interval: float = setting(
        DEFAULT_INTERVAL,
        check=_seconds(minimum=0.05),
        help="Seconds between two cycles of observe -> decide -> act (the "
        "original tool's MONITOR_DELAY).",
    )
    cycle_deadline: float = setting(
        0.0,
        check=_seconds(maximum=2 * MAX_SECONDS),
        derived="twice the interval",
        example="10",
        help="A cycle that takes longer than this many seconds is reported as an overrun (log "
        "and metrics).",
    )
    command_timeout: float = setting(
        10.0,
        check=_seconds(),
        help="Default timeout in seconds of every external command (drbdadm, tgtadm, ip, "
        "arping...). A command that runs over is killed and counted in "
        "iscsi_ha_command_timeouts_total.",
    )
    drbd: DrbdConfig = field(default_factory=DrbdConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    xenapi: XenApiConfig = field(default_factory=XenApiConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    peer: PeerConfig = field(default_factory=PeerConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)

    def __post_init__(self) -> None:
        # Frozen: derived defaults are set once, here, so every Config is complete.
        if not self.cycle_deadline:
            object.__setattr__(self, "cycle_deadline", 2 * self.interval)
        if not self.target.luns:
            luns = default_luns(self.resources)
            object.__setattr__(self, "target", dataclasses.replace(self.target, luns=luns))

    def to_dict(
        self, redact: bool = True, environ: Optional[Mapping[str, str]] = None
    ) -> Dict[str, Any]:
        """Plain data in the YAML shape, for ``iscsi-cfg get`` and the control socket.

        Nothing secret is ever in a Config, so both forms are safe to print. ``redact=True`` (the
        display form) adds ``xenapi.password_source``: where the password would come from, never
        the value. ``redact=False`` gives exactly the keys ``parse_config`` accepts, so it
        round-trips.
        """
        out: Dict[str, Any] = {}
        for name in TOP_ORDER:
            value = getattr(self, name)
            out[name] = _plain(value)
        if redact:
            out["xenapi"]["password_source"] = password_source(self, environ)
        return out


# The sections: the top-level keys whose value is a mapping of settings, with their dataclass.
_TYPES = typing.get_type_hints(Config)
_SECTIONS: Dict[str, type] = {
    f.name: _TYPES[f.name]
    for f in dataclasses.fields(Config)
    if dataclasses.is_dataclass(_TYPES[f.name])
}
# The order of the file (example, README, `iscsi-cfg get`): the plain keys, then the sections,
# each in the order declared above (so the two required keys, resources and vip, come first).
TOP_ORDER: Tuple[str, ...] = tuple(
    [f.name for f in dataclasses.fields(Config) if f.name not in _SECTIONS] + list(_SECTIONS)
)


def section_class(name: str) -> Optional[type]:
    """The dataclass of section ``name`` (``vip`` -> VipConfig); None for a plain key."""
    return _SECTIONS.get(name)


def check_of(f: "dataclasses.Field[Any]") -> Check:
    return f.metadata["check"]


def yaml_key(f: "dataclasses.Field[Any]") -> str:
    return f.metadata.get("key") or f.name


def _plain(value: Any) -> Any:
    if isinstance(value, Lun):
        out = {"lun": value.number, "path": value.path}
        out.update(
            {
                k: getattr(value, k)
                for k in ("serial", "scsi_id", "vendor", "product")
                if getattr(value, k) is not None
            }
        )
        return out
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# The secret
# --------------------------------------------------------------------------------------------


def read_xenapi_password(cfg: Config, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The XenAPI password: the environment variable if set and non-empty, else the file.

    None when neither is there (a local socket login needs no password on XenServer). An
    unreadable file raises ConfigError naming the file, never its content.
    """
    env = os.environ if environ is None else environ
    x = cfg.xenapi
    if x.password_env and env.get(x.password_env):
        return env[x.password_env]
    if not x.password_file:
        return None
    try:
        text = read_capped(x.password_file, SMALL_LIMIT).decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(x.password_file, [f"xenapi.password_file: cannot read: {why}"]) from None
    # Editors add a final newline; a password never ends in one.
    password = text.rstrip("\r\n")
    return password or None


def password_source(cfg: Config, environ: Optional[Mapping[str, str]] = None) -> str:
    """Where read_xenapi_password() would take the password from, in words."""
    env = os.environ if environ is None else environ
    x = cfg.xenapi
    if x.password_env and env.get(x.password_env):
        return f"environment variable {x.password_env}"
    if x.password_file and os.path.exists(x.password_file):
        return f"file {x.password_file}"
    tried = [
        f"environment variable {x.password_env}" if x.password_env else "",
        f"file {x.password_file}" if x.password_file else "",
    ]
    tried = [t for t in tried if t]
    if not tried:
        return "not set"
    return "not set (" + ("neither " + " nor ".join(tried) if len(tried) > 1 else tried[0]) + ")"


_REQUIRED_HINTS = {
    "resources": "is required: the DRBD resources to manage, e.g. resources: [iscsi1]",
    "vip.address": "is required: the floating IPv4 address with its prefix, e.g. "
    "vip: {address: 10.10.10.3/24}",
}

# Keys people will try that must not exist, with the fix.
_KEY_HINTS = {
    "xenapi.password": "the password is never kept in this file: put it in the file named by "
    "xenapi.password_file or in the environment variable named by "
    "xenapi.password_env",
}
_LEGACY_PREFIXES = ("DRBD_", "MONITOR_", "MAIL_", "SMTP_", "ISCSI_", "ENABLE_LOGGING")


# --------------------------------------------------------------------------------------------
# Reading a mapping against the schema
# --------------------------------------------------------------------------------------------


def _all_keys() -> Dict[str, List[str]]:
    """Every key name of every section -> the dotted paths it exists at."""
    where: Dict[str, List[str]] = {}
    for cls in [Config, *_SECTIONS.values()]:
        section = next((n for n, c in _SECTIONS.items() if c is cls), "")
        for f in dataclasses.fields(cls):
            where.setdefault(f.name, []).append(f"{section}.{f.name}" if section else f.name)
    return where


def _unknown_key(key: Any, known: Sequence[str], prefix: str) -> Tuple[str, str]:
    """(path, message) for a key the schema does not have. The value is never quoted."""
    if not isinstance(key, str):
        return f"{prefix}{_short(key)}", "keys must be strings"
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,60}", key):
        # Shown quoted and cut short: a key may hold a newline or a whole pasted paragraph.
        shown = _short(key)
        return (f"{prefix}.{shown}" if prefix else shown), "unknown key"
    path = f"{prefix}.{key}" if prefix else key
    if path in _KEY_HINTS:
        return path, f"unknown key: {_KEY_HINTS[path]}"
    if not prefix and key.upper() == key and key.startswith(_LEGACY_PREFIXES):
        return path, (
            "unknown key: this is a setting of the legacy shell-style iscsi-ha.conf; "
            "convert that file with `iscsi-cfg import-conf FILE`"
        )
    # A real key in the wrong section ("interface" at the top) beats a spelling guess.
    elsewhere = [p for p in _all_keys().get(key, []) if p != path]
    if elsewhere:
        return path, (
            f"unknown key here; did you mean {elsewhere[0]!r}? (it belongs in that section)"
        )
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        where = f"{prefix}.{close[0]}" if prefix else close[0]
        return path, f"unknown key; did you mean {where!r}?"
    return path, f"unknown key (known here: {', '.join(known)})"


class _Reader:
    def __init__(self) -> None:
        self.problems: List[str] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def read(
        self, data: Mapping[Any, Any], cls: type, prefix: str, skip: Sequence[str] = ()
    ) -> Dict[str, Any]:
        """Check the keys of one mapping against ``cls``; return the valid values by name.

        Absent keys are left out, so the dataclass default applies.
        """
        fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                self.add(*_unknown_key(key, known, prefix))
        values: Dict[str, Any] = {}
        for f in fields:
            path = f"{prefix}.{f.name}" if prefix else f.name
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            check = check_of(f)
            value = data.get(f.name)
            if value is None and not getattr(check, "nullable", False):
                if required:
                    self.add(path, _REQUIRED_HINTS.get(path, "is required"))
                elif f.name in data:
                    self.add(
                        path,
                        f"has no value; remove the key to use the default ({_show_default(f)})",
                    )
                continue
            if f.name not in data:
                continue
            try:
                values[f.name] = check(value)
            except _Invalid as exc:
                for sub, message in exc.problems:
                    self.add(path + sub, message)
        return values

    def section(self, data: Mapping[Any, Any], name: str) -> Mapping[Any, Any]:
        value = data.get(name)
        # `drbd:` with every setting commented out is None: that means "all defaults".
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.add(name, f"must be a mapping of settings, got {_describe(value)}")
            return {}
        return value


def _show_default(f: "dataclasses.Field[Any]") -> str:
    if f.metadata.get("derived"):
        return str(f.metadata["derived"])
    default = f.default
    if isinstance(default, tuple):
        return "[" + ", ".join(str(d) for d in default) + "]"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def parse_config(mapping: Any, source: str = "<file>") -> Config:
    """Validate already-parsed YAML (a mapping) and build the Config; ConfigError lists all
    problems."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(source, [_not_a_mapping(mapping)])
    r = _Reader()
    top = r.read(mapping, Config, "", skip=tuple(_SECTIONS))
    sections: Dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        sections[name] = r.read(r.section(mapping, name), cls, name)
    if r.problems:
        raise ConfigError(source, r.problems)
    vip = VipConfig(**sections.pop("vip"))
    built = {name: _SECTIONS[name](**values) for name, values in sections.items()}
    return Config(vip=vip, **top, **built)


def _not_a_mapping(data: Any) -> str:
    # Only the type is named: the "config" may be some other file (even the password file).
    if data is None:
        return (
            "is empty: set at least resources and vip.address "
            "(examples/iscsi-ha.yaml shows every key)"
        )
    if isinstance(data, str) and "=" in data:
        return (
            "is not a YAML mapping: it looks like the legacy shell-style iscsi-ha.conf; "
            "convert it with `iscsi-cfg import-conf FILE`"
        )
    kinds: Dict[type, str] = {str: "a single string", list: "a list"}
    kind = kinds.get(type(data), f"a {type(data).__name__}")
    return f"must be a YAML mapping of settings (key: value lines), got {kind}"


# --------------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------------


# Limits of the YAML we accept. A real configuration nests 3 levels and has no number longer than
# a port; PyYAML itself recurses per level (Python's recursion limit at ~450 levels) and Python
# refuses to convert integers of more than 4,300 digits -- both used to escape as tracebacks.
MAX_YAML_DEPTH = 32
MAX_INT_DIGITS = 30
# What YAML's reader refuses (anything but tab, LF, CR and printable characters): found first by
# us, so the message names the line, the column and the character.
_NON_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that notes duplicate keys (PyYAML silently keeps the last one) and refuses
    integers too long to be any setting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: List[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        seen: Dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports an unhashable key itself
            if key in seen:
                self.duplicates.append(
                    f"line {line}: key {_short(key)} appears twice in one mapping (first on "
                    f"line {seen[key]}); keep one"
                )
            else:
                seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(c.isalnum() for c in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"an integer of {digits} digits; no setting takes a number that "
                f"long (at most {MAX_INT_DIGITS} digits)",
                node.start_mark,
            )
        return super().construct_yaml_int(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def _short(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


def _scan(text: str) -> Optional[str]:
    """What makes ``text`` unusable before YAML even parses it: a control character (a pasted
    terminal colour code, a NUL) or nesting deeper than any configuration needs. None if fine."""
    bad = _NON_PRINTABLE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        code = ord(bad.group())
        what = {0: "a NUL byte", 0x1B: "an escape character (a pasted terminal colour code?)"}
        return (
            f"line {line}, column {column}: {what.get(code, 'a control character')} "
            f"(U+{code:04X}); YAML does not allow it anywhere, comments included: "
            "delete it"
        )
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    mark = event.start_mark
                    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
                    return (
                        f"{where}nested more than {MAX_YAML_DEPTH} levels deep; a "
                        "configuration needs 3"
                    )
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError:
        return None  # a syntax error: the loader reports it with its line and column
    return None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # Built from the parts, not str(exc): that quotes a snippet of the file, which may hold a
    # value we must not print.
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = exc.problem or exc.context or "cannot be parsed"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        return f"{where}invalid YAML: {what}{context}"
    return "invalid YAML: the file cannot be parsed (check for stray control characters)"


def load_config(path: Any = DEFAULT_CONFIG_PATH) -> Config:
    """Read, parse and validate a configuration file; ConfigError says everything wrong with it.

    Nothing else ever escapes: whatever the file holds, the caller gets a ConfigError naming
    the file, so ``iscsi-ha run`` keeps its running configuration on a reload and every
    ``iscsi-cfg`` command says what is wrong instead of printing a traceback.
    """
    source = os.fspath(path)
    try:
        raw = read_capped(source, CONFIG_LIMIT)
    except FileNotFoundError:
        raise ConfigError(
            source,
            [
                "no such file: create it from examples/iscsi-ha.yaml, or convert a legacy "
                "iscsi-ha.conf with `iscsi-cfg import-conf FILE`"
            ],
        ) from None
    except IsADirectoryError:
        raise ConfigError(source, ["is a directory, not a configuration file"]) from None
    except OSError as exc:
        raise ConfigError(source, [f"cannot read: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"is not UTF-8 text (bad byte at offset {exc.start})"]) from None
    data, duplicates = load_yaml(text, source)
    if not duplicates:
        return parse_config(data, source)
    # Report the duplicates together with whatever else is wrong.
    try:
        parse_config(data, source)
        problems: Sequence[str] = ()
    except ConfigError as exc:
        problems = exc.problems
    raise ConfigError(source, [*duplicates, *problems])


def load_yaml(text: str, source: str) -> Tuple[Any, List[str]]:
    """(data, duplicate-key problems) of a YAML text; ConfigError for anything unusable.

    Shared by everything that reads YAML an operator wrote (the configuration, the web
    configuration, ``iscsi-cfg``'s lenient reading), so the limits above hold everywhere.
    """
    problem = _scan(text)
    if problem:
        raise ConfigError(source, [problem])
    try:
        loader = _StrictLoader(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_yaml_problem(exc)]) from None
    try:
        return loader.get_single_data(), loader.duplicates
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_yaml_problem(exc)]) from None
    except RecursionError:
        raise ConfigError(
            source, [f"invalid YAML: nested too deeply (more than {MAX_YAML_DEPTH} levels)"]
        ) from None
    except (ValueError, TypeError, OverflowError) as exc:
        # Whatever else PyYAML's constructors trip over; the type only, never the text.
        raise ConfigError(
            source, [f"invalid YAML: a value cannot be read ({type(exc).__name__})"]
        ) from None
    finally:
        loader.dispose()
