"""The configuration file: defaults, every validation message, the example file, the secret.

Error tests go through ``load_config`` on a real file, so they check what the operator reads:
the file name, the key path and the hint, one line per problem.
"""

import dataclasses
import json
import os
import re
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from iscsi_ha.controller import config as config_mod
from iscsi_ha.controller.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_EXPORTER_PORT,
    Config,
    ConfigError,
    Lun,
    VipConfig,
    load_config,
    parse_config,
    read_xenapi_password,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "iscsi-ha.yaml"
MINIMAL = "resources: [iscsi1]\nvip:\n  address: 10.10.10.3/24\n"
SECRET = "pw-Zx81-never-print-me"


def write(tmp_path, text, name="iscsi-ha.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def errors_of(tmp_path, text):
    """The problems load_config reports for ``text``, each line checked to name the file."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert lines and all(line.startswith(f"{path}: ") for line in lines), lines
    assert len(lines) == len(info.value.problems)
    return list(info.value.problems)


def minimal(**extra):
    data = {"resources": ["iscsi1"], "vip": {"address": "10.10.10.3/24"}}
    data.update(extra)
    return data


# --------------------------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------------------------


def test_every_default(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert DEFAULT_CONFIG_PATH == "/etc/iscsi-ha/iscsi-ha.yaml"
    assert cfg.node_name == socket.gethostname()
    assert cfg.interval == 5.0 and isinstance(cfg.interval, float)
    assert cfg.cycle_deadline == 10.0
    assert cfg.command_timeout == 10.0
    assert cfg.resources == ("iscsi1",)
    d = cfg.drbd
    assert (d.version, d.drbdadm, d.drbdsetup, d.proc_drbd, d.kernel_log) == (
        "auto",
        "drbdadm",
        "drbdsetup",
        "/proc/drbd",
        ("dmesg",),
    )
    assert cfg.pool.conf == "/etc/xensource/pool.conf"
    x = cfg.xenapi
    assert (x.enabled, x.url, x.socket, x.username) == (True, "local", "/var/lib/xcp/xapi", "root")
    assert x.password_file == "/etc/iscsi-ha/xapi-password"
    assert x.password_env == "ISCSI_HA_XAPI_PASSWORD"
    assert (x.timeout, x.verify_tls, x.plug_srs) == (10.0, False, True)
    t = cfg.target
    assert (t.tgtadm, t.tgtd, t.control_port, t.tid) == ("tgtadm", "tgtd", 0, 1)
    assert t.iqn == "iqn.2024-01.org.iscsi-ha:storage"
    assert t.initiator_address == "ALL"
    assert t.luns == (Lun(1, "/dev/drbd/by-res/iscsi1/0"),)
    assert (t.stop_timeout, t.restart_backoff, t.log_file) == (5.0, 2.0, None)
    v = cfg.vip
    assert (v.address, v.interface, v.ip, v.arping) == ("10.10.10.3/24", "xenbr0", "ip", "arping")
    assert (v.announce_interval, v.announce_count, v.probe_interval) == (60.0, 2, 10.0)
    assert (v.bare_address, v.prefixlen) == ("10.10.10.3", 24)
    p = cfg.paths
    assert (p.state_dir, p.status_file, p.control_socket) == (
        "/etc/iscsi-ha/state",
        "/etc/iscsi-ha/state/status",
        "/run/iscsi-ha/control.sock",
    )
    e = cfg.exporter
    assert (e.enabled, e.listen, e.web_config_file) == (True, "0.0.0.0:19856", None)
    assert (e.host, e.port) == ("0.0.0.0", DEFAULT_EXPORTER_PORT)
    assert (cfg.logging.level, cfg.logging.syslog) == ("info", True)
    assert cfg.control.allowed_uids == (0,)


def test_derived_defaults_follow_their_inputs():
    cfg = parse_config(minimal(resources=["r0", "data_1", "x.y-z"], interval=3))
    assert cfg.cycle_deadline == 6.0
    assert cfg.target.luns == (
        Lun(1, "/dev/drbd/by-res/r0/0"),
        Lun(2, "/dev/drbd/by-res/data_1/0"),
        Lun(3, "/dev/drbd/by-res/x.y-z/0"),
    )
    explicit = parse_config(
        minimal(interval=3, cycle_deadline=1.5, target={"luns": [{"lun": 7, "path": "/dev/drbd1"}]})
    )
    assert explicit.cycle_deadline == 1.5
    assert explicit.target.luns == (Lun(7, "/dev/drbd1"),)


def test_direct_construction_fills_derived_defaults():
    cfg = Config(resources=("a", "b"), vip=VipConfig("10.99.0.3/24"), interval=2.0)
    assert cfg.cycle_deadline == 4.0
    assert [lun.number for lun in cfg.target.luns] == [1, 2]


def test_values_are_normalised():
    cfg = parse_config(
        minimal(
            vip={"address": "10.10.10.3/255.255.255.0"},
            drbd={"version": 9},
            logging={"level": "DEBUG"},
            exporter={"listen": "[::1]:9100"},
        )
    )
    assert cfg.vip.address == "10.10.10.3/24"
    assert cfg.drbd.version == "9"
    assert parse_config(minimal(drbd={"version": 8.4})).drbd.version == "8.4"
    assert cfg.logging.level == "debug"
    assert (cfg.exporter.host, cfg.exporter.port) == ("::1", 9100)


def test_sections_left_empty_mean_all_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + "drbd:\ntarget:\nlogging:\n"))
    assert cfg == load_config(write(tmp_path, MINIMAL, "other.yaml"))


def test_nullable_keys_accept_null():
    cfg = parse_config(
        minimal(
            xenapi={"password_file": None, "password_env": None},
            target={"log_file": "/var/log/tgtd.log"},
        )
    )
    assert cfg.xenapi.password_file is None and cfg.xenapi.password_env is None
    assert cfg.target.log_file == "/var/log/tgtd.log"


# --------------------------------------------------------------------------------------------
# The example file
# --------------------------------------------------------------------------------------------


def _schema_paths():
    paths = []
    for f in dataclasses.fields(Config):
        if f.name in config_mod._SECTIONS:
            section = config_mod._SECTIONS[f.name]
            paths += [f"{f.name}.{g.name}" for g in dataclasses.fields(section)]
        else:
            paths.append(f.name)
    return paths


def test_example_loads_and_equals_the_defaults():
    cfg = load_config(EXAMPLE)
    assert cfg == parse_config(minimal())


def test_example_uncommented_still_equals_the_defaults(tmp_path):
    # Every "#key: value" line is a default: switching them all on must change nothing, so the
    # documented defaults are the real ones and every commented key exists.
    text = EXAMPLE.read_text()
    uncommented, count = re.subn(r"(?m)^(\s*)#(?=[a-z_][a-z0-9_]*:)", r"\1", text)
    assert count >= 40
    assert load_config(write(tmp_path, uncommented)) == parse_config(minimal())


def test_example_documents_every_key():
    text = EXAMPLE.read_text()
    section = ""
    found = set()
    for line in text.splitlines():
        m = re.match(r"^(\s*)#?\s*([a-z_][a-z0-9_]*):", line)
        if not m:
            continue
        if not m.group(1) and not line.startswith("#  "):
            section = m.group(2) if m.group(2) in config_mod._SECTIONS else ""
        key = m.group(2)
        found.add(f"{section}.{key}" if m.group(1) and section else key)
    missing = [p for p in _schema_paths() if p not in found]
    assert not missing


# --------------------------------------------------------------------------------------------
# Validation messages: file, key path and hint
# --------------------------------------------------------------------------------------------


CASES = [
    # (yaml, key path, fragments of the message)
    (
        "vip: {address: 10.10.10.300/24}",
        "vip.address",
        ["'10.10.10.300/24' is not an IPv4 interface", "ADDRESS/PREFIX", "10.10.10.3/24"],
    ),
    ("vip: {address: 10.10.10.3}", "vip.address", ["no prefix length", "10.10.10.3/24"]),
    ("vip: {address: 10.10.10.0/24}", "vip.address", ["network address"]),
    ("vip: {address: 10.10.10.255/24}", "vip.address", ["broadcast address"]),
    ("vip: {address: 10.10.10.3/0}", "vip.address", ["/0"]),
    ("vip: {address: 'fe80::1/64'}", "vip.address", ["is not an IPv4 interface"]),
    ("vip: {address: 127.0.0.5/8}", "vip.address", ["loopback"]),
    (
        "vip: {address: 10.10.10.3/24, interface: a-very-long-interface}",
        "vip.interface",
        ["not a network interface name", "15"],
    ),
    ("interval: yes", "interval", ["must be a number of seconds", "boolean", "yes/no"]),
    ("interval: '5'", "interval", ["string '5'", "remove the quotes"]),
    ("interval: 0", "interval", ["greater than 0"]),
    ("interval: -1", "interval", ["greater than 0"]),
    ("interval: .inf", "interval", ["finite"]),
    ("interval:", "interval", ["has no value", "remove the key", "default (5)"]),
    ("cycle_deadline: 0", "cycle_deadline", ["greater than 0"]),
    ("command_timeout: [1]", "command_timeout", ["a list"]),
    ("node_name: 42", "node_name", ["must be a string", "quote it"]),
    ("node_name: ''", "node_name", ["must not be empty"]),
    ("target: {tid: true}", "target.tid", ["must be an integer", "boolean"]),
    ("target: {tid: 1.0}", "target.tid", ["must be an integer", "write 1"]),
    ("target: {tid: 1.5}", "target.tid", ["must be an integer", "1.5"]),
    ("target: {tid: 0}", "target.tid", ["1 or more"]),
    ("target: {control_port: -1}", "target.control_port", ["0 or more"]),
    (
        "target: {iqn: 'iqn.2024-13.org.x:y'}",
        "target.iqn",
        ["not an iSCSI qualified name", "iqn.YYYY-MM"],
    ),
    ("target: {iqn: 'storage1'}", "target.iqn", ["not an iSCSI qualified name"]),
    ("target: {iqn: 'iqn.2024-01.Org.X:Storage'}", "target.iqn", ["lower case"]),
    ("target: {initiator_address: all}", "target.initiator_address", ["ALL in capitals"]),
    (
        "target: {initiator_address: 10.0.0.300}",
        "target.initiator_address",
        ["must be ALL, an IP address or a network"],
    ),
    ("target: {restart_backoff: 301}", "target.restart_backoff", ["at most 300"]),
    ("target: {luns: []}", "target.luns", ["at least one"]),
    ("target: {luns: {lun: 1}}", "target.luns", ["must be a list"]),
    ("target: {luns: [{lun: 0, path: /dev/drbd0}]}", "target.luns[0].lun", ["1 or more"]),
    ("target: {luns: [{path: /dev/drbd0}]}", "target.luns[0].lun", ["is required"]),
    ("target: {luns: [{lun: 1, path: dev/drbd0}]}", "target.luns[0].path", ["absolute path"]),
    (
        "target: {luns: [{lun: 1, path: /a, pth: /b}]}",
        "target.luns[0].pth",
        ["did you mean 'path'"],
    ),
    (
        "target: {luns: [{lun: 1, path: /a}, {lun: 1, path: /b}]}",
        "target.luns[1].lun",
        ["LUN 1 is already used by [0]"],
    ),
    (
        "target: {luns: [{lun: 1, path: /a}, {lun: 2, path: /a}]}",
        "target.luns[1].path",
        ["already exported by [0]"],
    ),
    ("target: {tgtadm: 'tgtadm -C 1'}", "target.tgtadm", ["without a shell", "without arguments"]),
    ("drbd: {version: '8.3'}", "drbd.version", ["auto", "8.4", "9"]),
    ("drbd: {version: 9.2}", "drbd.version", ["every DRBD 9.x"]),
    ("drbd: {kernel_log: dmesg}", "drbd.kernel_log", ["list of arguments", "[dmesg]"]),
    ("drbd: {kernel_log: []}", "drbd.kernel_log", ["at least one"]),
    ("drbd: {proc_drbd: proc/drbd}", "drbd.proc_drbd", ["absolute path"]),
    ("pool: {conf: ''}", "pool.conf", ["must not be empty"]),
    ("xenapi: {enabled: 1}", "xenapi.enabled", ["true or false", "write true or false"]),
    ("xenapi: {verify_tls: 'no'}", "xenapi.verify_tls", ["true or false", "remove the quotes"]),
    ("xenapi: {url: 'ftp://host'}", "xenapi.url", ["neither 'local'", "https://"]),
    ("xenapi: {password_env: 'MY-VAR'}", "xenapi.password_env", ["environment variable name"]),
    ("xenapi: {timeout: 0}", "xenapi.timeout", ["greater than 0"]),
    (
        "vip: {address: 10.10.10.3/24, announce_interval: -5}",
        "vip.announce_interval",
        ["0 (off) or more"],
    ),
    ("vip: {address: 10.10.10.3/24, announce_count: 0}", "vip.announce_count", ["1 or more"]),
    ("vip: {address: 10.10.10.3/24, probe_interval: no}", "vip.probe_interval", ["boolean"]),
    ("paths: {state_dir: state}", "paths.state_dir", ["absolute path"]),
    ("paths: /etc", "paths", ["must be a mapping of settings"]),
    ("exporter: {listen: '9856'}", "exporter.listen", ["no port", "HOST:PORT"]),
    ("exporter: {listen: '0.0.0.0:99999'}", "exporter.listen", ["1 to 65535"]),
    ("exporter: {listen: ':::9856'}", "exporter.listen", ["brackets"]),
    ("exporter: {listen: 'bad_host!:9856'}", "exporter.listen", ["not a host name"]),
    (
        "logging: {level: warn}",
        "logging.level",
        ["one of debug, info, warning, error", "did you mean 'warning'"],
    ),
    ("control: {allowed_uids: [0, -1]}", "control.allowed_uids[1]", ["0 or more"]),
    ("control: {allowed_uids: []}", "control.allowed_uids", ["at least one"]),
    ("resources: []", "resources", ["at least one", "[iscsi1, iscsi2]"]),
    ("resources: iscsi1:iscsi2", "resources", ["must be a list", "[iscsi1, iscsi2]"]),
    ("resources: [iscsi1, 'bad name']", "resources[1]", ["not a DRBD resource name"]),
    ("resources: [iscsi1, '..']", "resources[1]", ["not a DRBD resource name"]),
    ("resources: [iscsi1, iscsi2, iscsi1]", "resources[2]", ["'iscsi1' is already listed at [0]"]),
    ("resources: [1]", "resources[0]", ["must be a string", "quote it"]),
    ("intervall: 5", "intervall", ["unknown key", "did you mean 'interval'"]),
    ("vip: {address: 10.10.10.3/24, adress: x}", "vip.adress", ["did you mean 'vip.address'"]),
    ("interface: xenbr1", "interface", ["did you mean 'vip.interface'", "belongs in"]),
    ("DRBD_RESOURCES: iscsi1", "DRBD_RESOURCES", ["legacy", "iscsi-cfg import-conf"]),
    ("zzz: 1", "zzz", ["unknown key", "known here:"]),
    ("drbd: {qqq: 1}", "drbd.qqq", ["unknown key", "known here: version"]),
]


@pytest.mark.parametrize("snippet,path,fragments", CASES, ids=[c[1] + ":" + c[0] for c in CASES])
def test_each_validation_message(tmp_path, snippet, path, fragments):
    # A valid file in which the snippet replaces (or adds) one top-level key.
    base = {"resources": "resources: [iscsi1]", "vip": "vip: {address: 10.10.10.3/24}"}
    top_key = snippet.split(":", 1)[0]
    lines = [v for k, v in base.items() if k != top_key] + [snippet]
    problems = errors_of(tmp_path, "\n".join(lines) + "\n")
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: "), problems
    for fragment in fragments:
        assert fragment in problems[0], (fragment, problems[0])


def test_required_keys(tmp_path):
    problems = errors_of(tmp_path, "interval: 5\n")
    assert problems[0].startswith("resources: is required")
    assert "resources: [iscsi1]" in problems[0]
    assert problems[1].startswith("vip.address: is required")
    assert "10.10.10.3/24" in problems[1]
    assert len(problems) == 2
    problems = errors_of(tmp_path, "resources: [a]\nvip: {interface: eth0}\n")
    assert problems == [problems[0]] and problems[0].startswith("vip.address: is required")
    assert errors_of(tmp_path, "resources: [a]\nvip: {address: null}\n")[0].startswith(
        "vip.address: is required"
    )


def test_all_errors_are_collected(tmp_path):
    text = """\
resources: [iscsi1, iscsi1]
intervall: 5
interval: yes
vip:
  address: 10.10.10.300/24
  announce_count: 2.5
target:
  iqn: nope
  luns: [{lun: 0, path: relative}]
exporter: {listen: nowhere}
logging: {level: loud}
"""
    problems = errors_of(tmp_path, text)
    paths = [p.split(": ", 1)[0] for p in problems]
    assert sorted(paths) == sorted(
        [
            "resources[1]",
            "intervall",
            "interval",
            "vip.address",
            "vip.announce_count",
            "target.iqn",
            "target.luns[0].lun",
            "target.luns[0].path",
            "exporter.listen",
            "logging.level",
        ]
    )


# --------------------------------------------------------------------------------------------
# The file itself
# --------------------------------------------------------------------------------------------


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    problems = errors_of(tmp_path, "resources: [iscsi1]\nvip:\n  address: [10.10.10.3/24\n")
    assert re.match(r"line \d+, column \d+: invalid YAML: ", problems[0]), problems
    problems = errors_of(tmp_path, "resources: [iscsi1]\n\tvip: {}\n")
    assert problems[0].startswith("line 2, column 1: invalid YAML"), problems


def test_duplicate_keys_are_errors_and_reported_with_the_rest(tmp_path):
    problems = errors_of(tmp_path, MINIMAL + "interval: 5\ninterval: 6\nlogging: {level: x}\n")
    assert problems[0] == (
        "line 5: key 'interval' appears twice in one mapping (first on line 4); keep one"
    )
    assert problems[1].startswith("logging.level: ")


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("", "is empty: set at least resources and vip.address"),
        ("# only comments\n", "is empty"),
        ("- a\n- b\n", "must be a YAML mapping of settings (key: value lines), got a list"),
        ("just words\n", "got a single string"),
        ("DRBD_RESOURCES=iscsi1\nDRBD_VIRTUAL_IP=10.10.10.3\n", "iscsi-cfg import-conf"),
    ],
)
def test_a_file_that_is_not_a_mapping(tmp_path, text, fragment):
    problems = errors_of(tmp_path, text)
    assert len(problems) == 1 and fragment in problems[0]


def test_missing_directory_and_binary_files(tmp_path):
    for path, fragment in [
        (tmp_path / "absent.yaml", "no such file: create it from examples/iscsi-ha.yaml"),
        (tmp_path, "is a directory"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value) == f"{path}: " + info.value.problems[0]
        assert fragment in str(info.value)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"resources: [\xff]\n")
    with pytest.raises(ConfigError, match="is not UTF-8"):
        load_config(binary)


def test_unreadable_file(tmp_path):
    # Root reads through mode 000, so the check runs as nobody in a forked child (nobody is
    # refused by the file's mode and by pytest's 0700 temporary directories alike).
    path = write(tmp_path, MINIMAL)
    path.chmod(0)
    if os.geteuid() == 0:
        pid = os.fork()
        if pid == 0:  # child: drop to nobody and report through the exit code
            code = 1
            try:
                os.setuid(65534)
                load_config(path)
            except ConfigError as exc:
                code = 0 if "cannot read: Permission denied" in str(exc) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    else:
        with pytest.raises(ConfigError, match="cannot read: Permission denied"):
            load_config(path)


# --------------------------------------------------------------------------------------------
# The secret
# --------------------------------------------------------------------------------------------


def _cfg_with_secret_sources(tmp_path):
    pw_file = tmp_path / "xapi-password"
    pw_file.write_text(SECRET + "-file\n")
    cfg = parse_config(minimal(xenapi={"password_file": str(pw_file), "password_env": "T_PW"}))
    return cfg, pw_file


def test_password_env_wins_then_file_then_none(tmp_path):
    cfg, pw_file = _cfg_with_secret_sources(tmp_path)
    assert read_xenapi_password(cfg, {"T_PW": SECRET}) == SECRET
    assert read_xenapi_password(cfg, {"T_PW": ""}) == SECRET + "-file"  # empty = unset
    assert read_xenapi_password(cfg, {}) == SECRET + "-file"  # trailing newline dropped
    pw_file.unlink()
    assert read_xenapi_password(cfg, {}) is None
    pw_file.write_text("\n")
    assert read_xenapi_password(cfg, {}) is None


def test_password_from_the_real_environment(tmp_path, monkeypatch):
    cfg, _ = _cfg_with_secret_sources(tmp_path)
    monkeypatch.setenv("T_PW", SECRET)
    assert read_xenapi_password(cfg) == SECRET


def test_unreadable_password_file_names_the_file_not_the_content(tmp_path):
    cfg = parse_config(minimal(xenapi={"password_file": str(tmp_path)}))  # a directory
    with pytest.raises(ConfigError) as info:
        read_xenapi_password(cfg, {})
    assert str(info.value).startswith(f"{tmp_path}: xenapi.password_file: cannot read")


def test_password_never_appears_in_to_dict(tmp_path, monkeypatch):
    cfg, pw_file = _cfg_with_secret_sources(tmp_path)
    monkeypatch.setenv("T_PW", SECRET)
    shown = cfg.to_dict()
    dumped = json.dumps(shown)
    assert SECRET not in dumped and "never-print" not in dumped
    assert shown["xenapi"]["password_source"] == "environment variable T_PW"
    monkeypatch.delenv("T_PW")
    shown = cfg.to_dict()
    assert SECRET not in json.dumps(shown)
    assert shown["xenapi"]["password_source"] == f"file {pw_file}"
    pw_file.unlink()
    assert cfg.to_dict()["xenapi"]["password_source"] == (
        f"not set (neither environment variable T_PW nor file {pw_file})"
    )
    assert "password_source" not in cfg.to_dict(redact=False)["xenapi"]


def test_password_never_appears_in_error_messages(tmp_path, monkeypatch):
    pw_file = tmp_path / "xapi-password"
    pw_file.write_text(SECRET + "\n")
    monkeypatch.setenv("ISCSI_HA_XAPI_PASSWORD", SECRET)
    text = f"""\
resources: [iscsi1]
vip: {{address: 10.10.10.3}}
xenapi:
  password: {SECRET}
  url: https://root:{SECRET}@xcp-host1
  password_file: {pw_file}
  timeout: yes
pasword: {SECRET}
"""
    problems = errors_of(tmp_path, text)
    message = "\n".join(problems)
    assert SECRET not in message
    assert len(problems) == 5
    assert any(
        p.startswith("xenapi.password: unknown key: the password is never kept") for p in problems
    )
    assert any(p.startswith("xenapi.url: must not contain a user or password") for p in problems)
    # The password file given as the configuration: only its type is named.
    with pytest.raises(ConfigError) as info:
        load_config(pw_file)
    assert SECRET not in str(info.value)
    # A YAML error on the line holding a secret does not quote the line.
    bad = write(tmp_path, f"resources: [a]\nsecret: '{SECRET}\n", "bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert SECRET not in str(info.value) and "invalid YAML" in str(info.value)


# --------------------------------------------------------------------------------------------
# Round trip and properties
# --------------------------------------------------------------------------------------------


def test_to_dict_round_trips():
    cfg = parse_config(
        minimal(
            resources=["a", "b"],
            node_name="n1",
            interval=2.5,
            target={"luns": [{"lun": 3, "path": "/dev/x"}], "log_file": "/tmp/t.log"},
            xenapi={"url": "https://h", "password_file": None},
            exporter={"listen": "127.0.0.1:1234"},
            control={"allowed_uids": [0, 1000]},
        )
    )
    plain = cfg.to_dict(redact=False)
    json.dumps(plain)
    assert parse_config(plain) == cfg
    assert plain["target"]["luns"] == [{"lun": 3, "path": "/dev/x"}]


@given(st.booleans(), st.sampled_from(["interval", "command_timeout", "cycle_deadline"]))
def test_a_boolean_is_never_a_number(flag, key):
    with pytest.raises(ConfigError) as info:
        parse_config(minimal(**{key: flag}))
    assert info.value.problems[0].startswith(f"{key}: must be a number of seconds, got the boolean")


@given(st.ip_addresses(v=4), st.integers(min_value=1, max_value=32))
def test_vip_addresses_accepted_iff_ipaddress_agrees(ip, prefix):
    import ipaddress

    iface = ipaddress.IPv4Interface(f"{ip}/{prefix}")
    net = iface.network
    host_ok = not (prefix <= 30 and ip in (net.network_address, net.broadcast_address))
    special = ip.is_loopback or ip.is_multicast or ip.is_unspecified
    try:
        cfg = parse_config(minimal(vip={"address": f"{ip}/{prefix}"}))
    except ConfigError as exc:
        assert not host_ok or special, exc
    else:
        assert host_ok and not special
        assert (cfg.vip.bare_address, cfg.vip.prefixlen) == (str(ip), prefix)


def test_tgt_control_port_above_tgtadm_range_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("resources: [r0]\nvip: {address: 10.1.1.3/24}\ntarget: {control_port: 40000}\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert "target.control_port: must be 32767 or less" in str(err.value)
