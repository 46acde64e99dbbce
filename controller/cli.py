"""``iscsi-cfg``: the operator's command line for iscsi-ha.

Everything that needs the running controller goes through its control socket (``control.py``):
``status``, ``get``, ``log`` and the four manual-mode commands. The rest works on files and needs no
controller: ``import-conf`` converts a legacy ``iscsi-ha.conf`` and ``check-config`` validates a
YAML configuration.

The socket path comes from ``--socket``, else from the configuration (``--config``, default
``/etc/iscsi-ha/iscsi-ha.yaml``). A broken configuration must not keep an operator from seeing the
status in the middle of an incident, so a file that does not validate is still read leniently for
``paths.*`` and ``interval``, with a note on stderr.

When the controller does not answer, ``status`` says so and shows the legacy status file the
controller last wrote, warning when it is older than the loop interval + 5 s (HA-Lizard judges the
same age before it fences). Exit codes are the same for every command:

    0  done
    1  refused for safety (the reason is printed)
    2  usage or configuration error
    3  the controller is unreachable
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import IO, Any, Callable, Dict, Optional, Sequence, Tuple

import yaml

from . import __version__
from .cli_common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Denied,
    Unreachable,
    answer_code,
    ask,
)
from .cli_common import err as _err
from .commands import ROLE_COMMANDS, Command
from .config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_INTERVAL,
    ConfigError,
    PathsConfig,
    load_config,
    load_yaml,
)
from .files import CONFIG_LIMIT, SMALL_LIMIT, read_capped, read_text, write_temp
from .splitbrain_cli import add_parser as add_split_brain
from .splitbrain_cli import run as split_brain
from .status_view import STALE_GRACE, fmt_duration, fmt_time, render_answer
from .status_view import plural as _plural

WATCH_PERIOD = 2.0
FOLLOW_PERIOD = 1.0
# A role command runs a whole cycle under the controller's lock (every command in it has its own
# timeout, 10 s by default), after any cycle that is running already.
ROLE_TIMEOUT = 180.0
CLEAR_SCREEN = "\033[H\033[2J"


# --------------------------------------------------------------------------------------------
# Where things are
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    socket: str
    status_file: str
    interval: float
    note: Optional[str] = None  # why the configuration was not used as is


def locate(config: Optional[str], socket_override: Optional[str]) -> Where:
    path = config or DEFAULT_CONFIG_PATH
    defaults = PathsConfig()
    try:
        cfg = load_config(path)
        where = Where(cfg.paths.control_socket, cfg.paths.status_file, cfg.interval)
    except ConfigError:
        note = None
        if config is not None or os.path.exists(path):
            note = (
                f"{path} is not a valid configuration (see `iscsi-cfg check-config "
                f"{path}`); read what it says about paths and interval, if anything"
            )
        sock, status, interval = _lenient(path, defaults)
        where = Where(sock, status, interval, note)
    if socket_override:
        where = Where(socket_override, where.status_file, where.interval, where.note)
    return where


def _lenient(path: str, defaults: PathsConfig) -> Tuple[str, str, float]:
    """paths.control_socket, paths.status_file and interval from a file that does not validate."""
    sock, status, interval = defaults.control_socket, defaults.status_file, DEFAULT_INTERVAL
    try:
        # Same limits as the controller's own reading: a FIFO, a device, a huge or hostile file
        # must not hang or crash a command whose whole point is to work when things are wrong.
        data, _ = load_yaml(read_capped(path, CONFIG_LIMIT).decode("utf-8"), path)
    except (OSError, UnicodeDecodeError, ConfigError):
        return sock, status, interval
    if not isinstance(data, dict):
        return sock, status, interval
    paths = data.get("paths")
    if isinstance(paths, dict):
        if isinstance(paths.get("control_socket"), str) and paths["control_socket"]:
            sock = paths["control_socket"]
        if isinstance(paths.get("status_file"), str) and paths["status_file"]:
            status = paths["status_file"]
    value = data.get("interval")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 3600:
        interval = float(value)
    return sock, status, interval


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def render_status(doc: Dict[str, Any]) -> str:
    """The status screen from a ``status`` answer (``status_view``)."""
    return render_answer(doc, DEFAULT_INTERVAL)


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def status_once(where: Where, as_json: bool, compact: bool = False) -> int:
    try:
        doc = ask(where.socket, {"cmd": Command.STATUS})
    except Denied as exc:
        _err(str(exc))
        return EXIT_USAGE
    except Unreachable as exc:
        return fallback_status(where, str(exc), as_json, compact)
    if not doc.get("ok"):
        _err(str(doc.get("error", "status refused")))
        return answer_code(doc)
    if as_json:
        print(json.dumps(doc, indent=None if compact else 2, sort_keys=True))
    else:
        sys.stdout.write(render_status(doc))
    return EXIT_OK


def fallback_status(where: Where, reason: str, as_json: bool, compact: bool = False) -> int:
    """The controller does not answer: say so, show the legacy status file and its age."""
    now = time.time()
    text: Optional[str] = None
    age: Optional[float] = None
    problem = ""
    try:
        age = now - os.stat(where.status_file).st_mtime
        text = read_text(where.status_file, SMALL_LIMIT)
    except OSError as exc:
        age = None
        problem = exc.strerror or str(exc)
    limit = where.interval + STALE_GRACE
    stale = age is not None and age > limit
    if as_json:
        print(
            json.dumps(
                {
                    "ok": False,
                    "reachable": False,
                    "error": reason,
                    "status_file": {
                        "path": where.status_file,
                        "age": age,
                        "stale": stale,
                        "text": text,
                        "error": problem or None,
                    },
                },
                indent=None if compact else 2,
                sort_keys=True,
            )
        )
        return EXIT_UNREACHABLE
    _err(f"the iscsi-ha controller is not reachable: {reason}")
    if text is None:
        _err(f"no status file to show either: {where.status_file}: {problem}")
        return EXIT_UNREACHABLE
    _err(
        f"showing the status file it last wrote, {where.status_file} "
        f"(written {fmt_duration(age)} ago, at {fmt_time(now - (age or 0))})"
    )
    if stale:
        _err(
            f"WARNING: {where.status_file} is {fmt_duration(age)} old, older than the loop "
            f"interval + {STALE_GRACE:g}s ({limit:g}s): this status is stale, and HA-Lizard "
            "sees the same age"
        )
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return EXIT_UNREACHABLE


def cmd_status(where: Where, args: argparse.Namespace) -> int:
    if not args.watch:
        return status_once(where, args.json)
    tty = sys.stdout.isatty()
    code = EXIT_OK
    first = True
    try:
        while True:
            if tty and not args.json:
                sys.stdout.write(CLEAR_SCREEN)
            elif not args.json and not first:
                sys.stdout.write("\n")  # frames one after another when not on a terminal
            first = False
            code = status_once(where, args.json, compact=True)
            if tty and not args.json:
                sys.stdout.write(f"\n(every {WATCH_PERIOD:g}s; Ctrl-C to stop)\n")
            sys.stdout.flush()
            time.sleep(WATCH_PERIOD)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return code


def request(
    where: Where, req: Dict[str, Any], timeout: Optional[float] = None, unreachable: str = ""
) -> Tuple[Optional[Dict[str, Any]], int]:
    """Ask the controller; (answer, EXIT_OK) on success, else (None, exit code) with the error
    already printed. Used by every command except ``status``, which falls back instead."""
    try:
        answer = ask(where.socket, req, timeout=timeout)
    except Denied as exc:
        _err(str(exc))
        return None, EXIT_USAGE
    except Unreachable as exc:
        _err(f"the iscsi-ha controller is not reachable{unreachable}: {exc}")
        return None, EXIT_UNREACHABLE
    if not answer.get("ok"):
        _err(str(answer.get("message") or answer.get("error") or f"{req['cmd']} refused"))
        return None, answer_code(answer)
    return answer, EXIT_OK


def cmd_get(where: Where, args: argparse.Namespace) -> int:
    answer, code = request(where, {"cmd": Command.GET})
    if answer is None:
        return code
    config = answer.get("config")
    if args.json:
        print(json.dumps(config, indent=2))
        return EXIT_OK
    source = answer.get("config_path") or "its configuration file"
    print(f"# Effective configuration of the running controller, loaded from {source}.")
    print("# Secrets are never shown; xenapi.password_source says where the password comes from.")
    sys.stdout.write(yaml.safe_dump(config, sort_keys=False, default_flow_style=False))
    return EXIT_OK


def cmd_log(where: Where, args: argparse.Namespace) -> int:
    since = 0.0
    try:
        while True:
            answer, code = request(where, {"cmd": Command.LOG, "since": since})
            if answer is None:
                return code
            for entry in answer.get("entries") or []:
                t = float(entry.get("t", 0))
                print(f"{fmt_time(t)} {log_text(entry)}")
                since = max(since, t)
            if not args.follow:
                return EXIT_OK
            sys.stdout.flush()
            time.sleep(FOLLOW_PERIOD)
    except KeyboardInterrupt:
        return EXIT_OK


def log_text(entry: Dict[str, Any]) -> str:
    """ "outcome: message", without repeating an outcome the message already starts with."""
    outcome, message = str(entry.get("outcome", "?")), str(entry.get("message", ""))
    return message if message.startswith(f"{outcome}:") else f"{outcome}: {message}"


def cmd_role(where: Where, args: argparse.Namespace) -> int:
    req: Dict[str, Any] = {"cmd": Command(args.command)}
    if getattr(args, "accept_stale", None):
        resource = args.accept_stale
        info, code = request(
            where,
            {"cmd": Command.STALE_INFO, "resource": resource},
            unreachable=", nothing was done",
        )
        if info is None:
            return code
        print(render_stale_info(info))
        if not args.yes:
            if not sys.stdin.isatty():
                _err("refused: not a terminal; type the confirmation interactively or pass --yes")
                return EXIT_USAGE
            typed = input(f"Type the resource name ({resource}) to promote it anyway: ").strip()
            if typed != resource:
                _err("not confirmed; nothing was done")
                return EXIT_REFUSED
        who = os.environ.get("SUDO_USER") or os.environ.get("USER") or ""
        req.update(accept_stale=[resource], who=f"user {who}" if who else "")
    answer, code = request(where, req, timeout=ROLE_TIMEOUT, unreachable=", nothing was done")
    if answer is None:
        return code
    print(answer.get("message", "done"))
    return EXIT_OK


def cmd_switchover(where: Where, args: argparse.Namespace) -> int:
    from .switchover import DONE, FAILED, render

    try:
        answer = ask(where.socket, {"cmd": Command.SWITCHOVER}, timeout=ROLE_TIMEOUT)
    except Denied as exc:
        _err(str(exc))
        return EXIT_USAGE
    except Unreachable as exc:
        _err(f"the iscsi-ha controller is not reachable, nothing was done: {exc}")
        return EXIT_UNREACHABLE
    code = answer.get("code")
    if "message" not in answer:  # an error answer of the socket itself
        _err(str(answer.get("error") or "switchover refused"))
        return answer_code(answer)
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    elif code == DONE:
        print(render(answer))
    else:
        _err(render(answer))
    return code if code in (DONE, EXIT_REFUSED, FAILED) else EXIT_REFUSED


def render_stale_info(info: Dict[str, Any]) -> str:
    """What is known about a resource's data before an operator promotes it without proof."""
    now = float(info.get("now") or time.time())
    d = info.get("drbd") or {}
    lines = [
        f"What this host knows about {info.get('resource')}:",
        f"  DRBD now:        {d.get('role')}/{d.get('peer_role')}, {d.get('connection')}, "
        f"disk {d.get('disk')}/{d.get('peer_disk')}",
    ]
    last = info.get("last_connected")
    if last:
        lines.append(
            f"  peer last seen:  {fmt_time(float(last))} "
            f"({fmt_duration(now - float(last))} ago) as {info.get('last_peer_role')} "
            f"with its disk {info.get('last_peer_disk')}; this host was "
            f"{info.get('last_role')}"
        )
    else:
        lines.append("  peer last seen:  never, as far as the ledger knows")
    lines.append(
        f"  proof:           {'yes' if info.get('proof') else 'none'}: {info.get('why_not')}"
    )
    gi = info.get("generation_ids")
    lines.append(f"  drbdadm get-gi:  {gi or '(not readable)'}")
    then = info.get("generation_ids_when_last_connected")
    if then:
        lines.append(f"  get-gi then:     {then} (when the peer was last seen connected)")
    lines.append(
        "If the peer served writes after that moment, promoting this host serves OLDER "
        "data:\nthe VMs go back in time, and DRBD reports a split brain when the peer "
        "returns."
    )
    return "\n".join(lines)


def drbd_snippet(config_path: str, iscsi_ha: str) -> str:
    return f"""\
# iscsi-ha: DRBD's fence-peer handler. Add to every resource iscsi-ha manages, on BOTH hosts
# (e.g. /etc/drbd.d/iscsi1.res), then run `drbdadm adjust RESOURCE` on both.
# When the replication link breaks, DRBD on the Primary calls the handler; it asks the peer's
# controller over the peer channel (management network) to outdate its disk, so the peer cannot
# be promoted with older data. Needs the peer channel configured (peer: in the YAML).
resource iscsi1 {{
  disk {{
    fencing resource-only;      # DRBD 8.4 (on DRBD 9 this line goes into net {{ }})
  }}
  handlers {{
    fence-peer "{iscsi_ha} fence-peer --config {config_path}";
  }}
}}
"""


def cmd_drbd_snippet(args: argparse.Namespace) -> int:
    import shutil

    config = args.config or DEFAULT_CONFIG_PATH
    print(drbd_snippet(config, shutil.which("iscsi-ha") or "/usr/bin/iscsi-ha"), end="")
    return EXIT_OK


def cmd_node_time2wait(args: argparse.Namespace) -> int:
    from .initiator_tuning import run

    path = args.config or DEFAULT_CONFIG_PATH
    if args.set_to is not None and not 0 <= args.set_to <= 3600:
        _err("--set: DefaultTime2Wait is 0 to 3600 seconds (RFC 7143)")
        return EXIT_USAGE
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        _err(f"invalid configuration, nothing was changed:\n{exc}")
        return EXIT_USAGE
    code, text = run(
        cfg.paths.state_dir, cfg.target.iqn, cfg.target.default_time2wait, args.set_to, args.revert
    )
    (print if code == EXIT_OK else _err)(text)
    return code


def cmd_peer_cert(args: argparse.Namespace) -> int:
    """Create this host's key and self-signed certificate for the peer channel (openssl)."""
    import socket as _socket
    import subprocess

    directory = args.dir
    key, crt = os.path.join(directory, "host.key"), os.path.join(directory, "host.crt")
    if not args.force and (os.path.exists(key) or os.path.exists(crt)):
        _err(
            f"refused: {key} or {crt} exists (--force replaces them; the peer must then get "
            "the new host.crt)"
        )
        return EXIT_USAGE
    os.makedirs(directory, mode=0o700, exist_ok=True)
    name = args.name or _socket.gethostname()
    argv = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        str(args.days),
        "-subj",
        f"/CN=iscsi-ha {name}",
        "-keyout",
        key,
        "-out",
        crt,
    ]
    old = os.umask(0o077)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _err(f"cannot run openssl: {exc}")
        return EXIT_USAGE
    finally:
        os.umask(old)
    if proc.returncode != 0:
        _err(f"openssl failed: {proc.stderr.strip()}")
        return EXIT_USAGE
    os.chmod(crt, 0o644)
    print(
        f"created {key} (0600) and {crt}.\nNext: copy {crt} to the other host as "
        f"{os.path.join(directory, 'peer.crt')}, and the other host's host.crt here as "
        f"{os.path.join(directory, 'peer.crt')}; set peer.address in the YAML on both hosts."
    )
    return EXIT_OK


def cmd_import_conf(args: argparse.Namespace) -> int:
    from .legacy import apply_tgt_conf, load_legacy, render_yaml

    try:
        data, notes = load_legacy(args.file)
        if args.tgt_conf:
            apply_tgt_conf(data, notes, args.tgt_conf, args.iqn)
    except ConfigError as exc:
        _err(f"cannot convert {args.file}, nothing was written:\n{exc}")
        return EXIT_USAGE
    text = render_yaml(data, notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not args.output:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        write_new(args.output, text, overwrite=args.force)
    except FileExistsError:
        _err(f"{args.output} exists; not overwriting it (use --force to replace it)")
        return EXIT_USAGE
    except OSError as exc:
        _err(f"cannot write {args.output}: {exc.strerror or exc}")
        return EXIT_USAGE
    _err(f"wrote {args.output}; check it with `iscsi-cfg check-config {args.output}`")
    return EXIT_OK


def write_new(path: str, text: str, overwrite: bool) -> None:
    """Write a whole file atomically; unless ``overwrite``, FileExistsError if it exists (checked
    atomically too: the file is linked into place, which fails on an existing name)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = write_temp(directory, text, 0o644, prefix=".iscsi-cfg-")
    try:
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.file or args.config or DEFAULT_CONFIG_PATH
    try:
        load_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        n = len(exc.problems)
        _err(f"{path}: {_plural(n, 'problem')}; the controller would refuse this file")
        return EXIT_USAGE
    print(f"OK: {path}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------

EXIT_CODES = """\
exit codes:
  0  done
  1  refused for safety (the reason is printed)
  2  usage or configuration error (also: not run as root)
  3  the controller is unreachable
  4  switchover only: failed half way (the message says where the storage is)"""

DESCRIPTION = """\
Status and manual control of iscsi-ha, the controller that keeps DRBD Primary, the iSCSI
target and the floating IP (VIP) on the pool master of a two-host XenServer / XCP-ng pool.
Commands that talk to the controller use its control socket, which only root may use."""

EPILOG = f"""\
planned switch of the storage to the other host (maintenance without VM downtime):
  on either host:               iscsi-cfg switchover
  (needs the peer channel; leaves both hosts in manual mode with the roles swapped:
  see `iscsi-cfg switchover --help`). By hand, without the peer channel:
  1. on both hosts:             iscsi-cfg manual-mode-enable
  2. on the current primary:    iscsi-cfg become-secondary
  3. on the other host:         iscsi-cfg become-primary
  4. afterwards, on both hosts: iscsi-cfg manual-mode-disable
     (refused while a host's storage role differs from its pool role: designate the new
     pool master first, or switch the storage back with steps 2 and 3)

{EXIT_CODES}

Run `iscsi-cfg COMMAND --help` for what each command does."""

HELP: Dict[str, Tuple[str, str]] = {
    "status": (
        "show this host's storage status",
        "Show the host role, manual mode, each DRBD resource's role, peer role, connection and\n"
        "disk states with sync progress and ETA, the iSCSI target (serving, LUNs, sessions), the\n"
        "VIP (local or not, conflicts) and the last cycle's outcome and age. Use it first, on\n"
        "both hosts, whenever something looks wrong.\n\n"
        "When the controller does not answer, says so on stderr, prints the legacy status file\n"
        "it last wrote, warns when that file is older than the interval + 5 s, and exits 3.",
    ),
    "get": (
        "print the running configuration (secrets redacted)",
        "Print the configuration the running controller uses (as YAML, or JSON with --json),\n"
        "with every default filled in. Secrets are never shown: xenapi.password_source only\n"
        "says where the password is read from. Use it to check what a reload really applied.",
    ),
    "log": (
        "print the last cycles' one-line outcomes",
        "Print the one-sentence outcome of the last cycles (up to 500, kept in memory by the\n"
        "controller): what it did and why. -f keeps following new ones until Ctrl-C. The full\n"
        "log is in the journal (journalctl -u iscsi-ha).",
    ),
    "manual-mode-enable": (
        "stop automatic role changes on this host",
        "Stop automatic storage role changes on this host: the roles stay as they are until\n"
        "become-primary / become-secondary. Persisted: survives a restart of the controller\n"
        "and a reboot. Use it before maintenance or a planned switch (on both hosts).",
    ),
    "manual-mode-disable": (
        "let the storage role follow the pool role again",
        "Leave manual mode: the storage role follows the pool role again. Refused (exit 1)\n"
        "unless this host's storage role already matches its pool role (master = primary,\n"
        "slave = secondary); the message says which command to run first.",
    ),
    "become-primary": (
        "make this host the storage primary (manual mode only)",
        "Promote this host: DRBD Primary, target serving, VIP bound (step 3 of a planned\n"
        "switch). Only in manual mode. Refused (exit 1) while any resource's peer is Primary\n"
        "(run become-secondary there first), while another host answers for the VIP, when\n"
        "DRBD has no UpToDate data to promote, or when the peer is unreachable and nothing\n"
        "proves this host has the newest data; the reason is printed.\n\n"
        "--accept-stale RESOURCE promotes without that proof: it first prints what is known\n"
        "(when the peer was last seen and in which role, DRBD's generation identifiers), asks\n"
        "you to type the resource name (or --yes for scripts), and the controller logs who ran\n"
        "it. Only when the peer is gone for good: if it served writes since, they are lost.",
    ),
    "become-secondary": (
        "make this host the storage secondary (manual mode only)",
        "Demote this host: VIP removed, target stopped, DRBD Secondary (step 2 of a planned\n"
        "switch). Only in manual mode; refused (exit 1) otherwise. VMs lose their storage\n"
        "until the other host runs become-primary.",
    ),
    "switchover": (
        "move the storage to the other host (both controllers coordinate)",
        "Move the storage to the other host in one command, run on either host: the other\n"
        "controller is armed first (it promotes the moment DRBD reports this side Secondary),\n"
        "then the holder releases (VIP removed, target stopped, DRBD Secondary), then the new\n"
        "holder promotes, serves and binds the VIP. Prints how long each phase took (also\n"
        "exported as iscsi_ha_switchover_duration_seconds{phase}).\n\n"
        "Refused (exit 1, nothing changed) when the peer channel is not configured or the peer\n"
        "does not answer, when a resource is not Connected and UpToDate on both hosts or a\n"
        "resync runs, when the hosts' LUN identities differ, when the storage is not on exactly\n"
        "one host, or while another switchover runs. Exit 4 when it failed half way: the\n"
        "message says where the storage is (moved back to the old holder, or nowhere).\n\n"
        "Afterwards both hosts are in manual mode with the roles swapped, so the pool master\n"
        "does not take the storage back. To end it: `iscsi-cfg switchover` back and then\n"
        "`iscsi-cfg manual-mode-disable` on both hosts, or designate the new holder pool master\n"
        "(xe pool-designate-new-master) and then `manual-mode-disable` on both (docs/runbook.md).",
    ),
    "node-time2wait": (
        "show or set DefaultTime2Wait in this host's open-iscsi records for our target",
        "XenServer's initiator (open-iscsi) waits DefaultTime2Wait seconds before it reconnects\n"
        "after the storage moved; a login negotiates the larger of the target's offer\n"
        "(target.default_time2wait) and the node record's (open-iscsi's default: 2). Without\n"
        "options: show the records of target.iqn on this host. --set 0 asks for 0 in each of\n"
        "them (iscsiadm -m node -o update; nothing else is touched; each previous value is kept\n"
        "in <state_dir>/node-time2wait.json), --revert puts the previous values back. Applies to\n"
        "sessions logged in afterwards (re-plug the SR's PBD on this host). Opt-in, on each host;\n"
        'needs no controller. See docs/runbook.md, "Faster reconnects".',
    ),
    "drbd-snippet": (
        "print the drbd.conf lines for the fence-peer handler",
        "Print the lines to add to each DRBD resource (both hosts) so that DRBD calls\n"
        "`iscsi-ha fence-peer` when the replication link breaks (fencing resource-only).\n"
        "Needs no controller.",
    ),
    "peer-cert": (
        "create this host's key and certificate for the peer channel",
        "Create host.key (0600) and a self-signed host.crt in DIR with openssl. Copy host.crt\n"
        "to the other host as peer.crt (and theirs here): each controller accepts exactly the\n"
        "other's certificate. Needs no controller.",
    ),
    "import-conf": (
        "convert a legacy iscsi-ha.conf to YAML",
        "Convert the legacy shell-style iscsi-ha.conf of the original tool to the YAML\n"
        "configuration, on stdout or into OUT. What was converted, dropped (MAIL_*: alerts now\n"
        "go through Prometheus) or assumed is printed on stderr and kept as comments. Needs no\n"
        "controller. Exit 2 when the file cannot be converted or OUT exists (see --force).\n"
        "With --tgt-conf /etc/tgt/targets.conf the target's IQN, LUNs and their SCSI identity\n"
        "come along, so XenServer's SR finds its LUN again after the migration:\n"
        "  iscsi-cfg import-conf iscsi-ha.conf --tgt-conf /etc/tgt/targets.conf -o iscsi-ha.yaml",
    ),
    "check-config": (
        "validate a YAML configuration file",
        'Validate a configuration file without touching anything: prints "OK: FILE", or every\n'
        'problem as "FILE: key.path: what is wrong" and exits 2. FILE defaults to --config.\n'
        "Run it before restarting or reloading the controller.",
    ),
}


def _add_queries(add: Callable[[str], argparse.ArgumentParser]) -> None:
    """status, get, log: answered from the controller's snapshot."""
    status = add("status")
    status.add_argument(
        "--watch", "-w", action="store_true", help=f"redraw every {WATCH_PERIOD:g}s until Ctrl-C"
    )
    status.add_argument(
        "--json",
        action="store_true",
        help="print the status as JSON, for scripts (with --watch: one line per redraw)",
    )
    get = add("get")
    get.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    log_ = add("log")
    log_.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new outcomes until Ctrl-C"
    )


def _add_role_commands(add: Callable[[str], argparse.ArgumentParser]) -> None:
    """The manual-mode commands and the switchover: they change who serves."""
    for name in ROLE_COMMANDS:
        sp = add(name)
        if name is Command.BECOME_PRIMARY:
            sp.add_argument(
                "--accept-stale",
                metavar="RESOURCE",
                help="promote RESOURCE even though nothing proves this host has "
                "the newest data (prints what is known, asks to confirm)",
            )
            sp.add_argument(
                "--yes", action="store_true", help="with --accept-stale: do not ask (for scripts)"
            )
    sw = add("switchover")
    sw.add_argument(
        "--json", action="store_true", help="print the report (message, phases in seconds) as JSON"
    )


def _add_host_tools(add: Callable[[str], argparse.ArgumentParser]) -> None:
    """Commands on this host's files and tools, with no controller involved."""
    nt = add("node-time2wait")
    what = nt.add_mutually_exclusive_group()
    what.add_argument(
        "--set",
        type=int,
        metavar="SECONDS",
        dest="set_to",
        help="ask for SECONDS (0: reconnect at once) in every record of target.iqn",
    )
    what.add_argument("--revert", action="store_true", help="put back the values --set replaced")
    add("drbd-snippet")
    pc = add("peer-cert")
    pc.add_argument(
        "--dir", default="/etc/iscsi-ha/peer", help="where to write (default /etc/iscsi-ha/peer)"
    )
    pc.add_argument("--name", help="host name in the certificate (default: this host's)")
    pc.add_argument("--days", type=int, default=3650, help="validity (default 3650)")
    pc.add_argument("--force", action="store_true", help="replace existing files")
    imp = add("import-conf")
    imp.add_argument("file", metavar="FILE", help="legacy iscsi-ha.conf to convert")
    imp.add_argument("--output", "-o", metavar="OUT", help="write the YAML here (default stdout)")
    imp.add_argument("--force", action="store_true", help="replace OUT if it exists")
    imp.add_argument(
        "--tgt-conf",
        metavar="TARGETS_CONF",
        help="also carry the target of tgt-admin's targets.conf over (IQN, LUN "
        "numbers, backing stores, each LUN's scsi_id/scsi_sn), e.g. "
        "/etc/tgt/targets.conf: an existing SR keeps its SCSIid",
    )
    imp.add_argument(
        "--iqn",
        metavar="IQN",
        help="with --tgt-conf: the target to import when the file has several",
    )


def parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="iscsi-cfg", description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt
    )
    p.add_argument("--version", action="version", version=f"iscsi-cfg {__version__}")
    p.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        default=None,
        help=f"configuration file, to find the control socket and the status file "
        f"(default {DEFAULT_CONFIG_PATH})",
    )
    p.add_argument(
        "--socket",
        metavar="PATH",
        default=None,
        help="control socket path (overrides paths.control_socket)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str) -> argparse.ArgumentParser:
        name = str(name)  # a Command is shown by its value
        short, long = HELP[name]
        return sub.add_parser(
            name, help=short, description=long, epilog=EXIT_CODES, formatter_class=fmt
        )

    _add_queries(add)
    _add_role_commands(add)
    _add_host_tools(add)
    add_split_brain(sub, EXIT_CODES, fmt)
    chk = add("check-config")
    chk.add_argument("file", metavar="FILE", nargs="?", help="file to check (default: --config)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.command is None:
        parser().print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "import-conf":
            return cmd_import_conf(args)
        if args.command == "check-config":
            return cmd_check_config(args)
        if args.command == "drbd-snippet":
            return cmd_drbd_snippet(args)
        if args.command == "peer-cert":
            return cmd_peer_cert(args)
        if args.command == "node-time2wait":
            return cmd_node_time2wait(args)
        where = locate(args.config, args.socket)
        if where.note:
            _err(f"note: {where.note}")
        if args.command == Command.STATUS:
            return cmd_status(where, args)
        if args.command == Command.GET:
            return cmd_get(where, args)
        if args.command == Command.LOG:
            return cmd_log(where, args)
        if args.command == Command.SWITCHOVER:
            return cmd_switchover(where, args)
        if args.command == "split-brain":
            return split_brain(where, args)
        return cmd_role(where, args)
    except BrokenPipeError:  # `iscsi-cfg log | head`
        _quiet_stdout()
        return EXIT_OK


def _quiet_stdout(stream: IO[str] = sys.stdout) -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
