"""Packaging, end to end: sdist and wheel, a clean install, the systemd unit, and the dom0 RPM.

Everything here runs the real tools: ``Dockerfile-build/build.sh`` (the script the Dockerfile runs)
builds the sdist and the wheel with ``python -m build``, stages /opt/iscsi-ha from this test's own
interpreter, runs ``rpmbuild`` and ``inspect`` (which also runs the packaged payload at
/opt/iscsi-ha inside a private mount namespace). The wheel is installed into a brand-new
virtualenv, dependencies from the package index, and both console scripts are run from there. The
unit is checked by ``systemd-analyze verify`` and against the directive list of systemd 219 (the
dom0's). The RPM scriptlets are executed by ``sh`` with a recording ``systemctl`` first on PATH,
so what they would do to a host is observed, not read.

All artefacts go to temporary directories; nothing is installed on this machine. The whole
module takes about a minute and a half (wheel ~15 s, clean install ~10 s, tree ~15 s, rpmbuild
~20 s, inspect ~5 s).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_SH = REPO / "Dockerfile-build" / "build.sh"
UNIT = REPO / "packaging" / "iscsi-ha.service"
EXAMPLE = REPO / "examples" / "iscsi-ha.yaml"
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (REPO / "controller" / "__init__.py").read_text(), re.M
).group(1)
RPM_NAME = f"iscsi-ha-{VERSION}-1.x86_64.rpm"


def _tail(proc: subprocess.CompletedProcess, n: int = 3000) -> str:
    return ((proc.stdout or "") + (proc.stderr or ""))[-n:]


def build(steps, dirs, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(dirs["out"]), WORK=str(dirs["work"]))
    return subprocess.run(["bash", str(BUILD_SH), *steps], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("packaging")
    return {"out": root / "dist", "work": root / "work"}


@pytest.fixture(scope="module")
def dists(dirs):
    proc = build(["wheel"], dirs)
    assert proc.returncode == 0, _tail(proc)
    wheel = dirs["out"] / f"iscsi_ha-{VERSION}-py3-none-any.whl"
    sdist = dirs["out"] / f"iscsi_ha-{VERSION}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dirs["out"].iterdir())
    return {"wheel": wheel, "sdist": sdist}


# ---------------------------------------------------------------------------- wheel and sdist


def test_wheel_holds_the_namespaced_packages_entry_points_and_data_files(dists):
    with zipfile.ZipFile(dists["wheel"]) as zf:
        names = set(zf.namelist())
        dist_info = f"iscsi_ha-{VERSION}.dist-info"
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        data = f"iscsi_ha-{VERSION}.data/data/share/iscsi-ha"
        unit = zf.read(f"{data}/iscsi-ha.service")
        example = zf.read(f"{data}/iscsi-ha.yaml")
    for module in ("controller/__init__.py", "controller/daemon.py", "controller/model.py",
                   "controller/systems/runner.py", "exporter/__init__.py"):
        assert f"iscsi_ha/{module}" in names
    # The package_dir mapping must not leak the source folder names as top-level packages.
    assert not any(n.startswith(("controller/", "exporter/", "tests/", "lab/")) for n in names)
    assert "iscsi-ha = iscsi_ha.controller.daemon:main" in entry_points
    assert "iscsi-cfg = iscsi_ha.controller.cli:main" in entry_points
    assert unit == UNIT.read_bytes()
    assert example == EXAMPLE.read_bytes()
    requires = re.findall(r"^Requires-Dist: (\S+)", metadata, re.M)
    assert {"prometheus-client", "apscheduler", "requests", "pyyaml", "xenapi", "bcrypt"} <= {
        re.split(r"[<>=!~;\[ ]", r)[0].lower() for r in requires
    }
    assert re.search(r"^Requires-Python: >=3\.\d+", metadata, re.M)


def test_sdist_carries_everything_needed_to_rebuild_the_artefacts(dists):
    with tarfile.open(dists["sdist"]) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for needed in ("setup.py", "MANIFEST.in", "examples/iscsi-ha.yaml",
                   "packaging/iscsi-ha.service", "packaging/iscsi-ha.spec",
                   "Dockerfile-build/Dockerfile", "Dockerfile-build/build.sh",
                   "Dockerfile-build/stage_tree.py", "Dockerfile-build/inspect_rpm.py",
                   "docs/install.md", "tests/test_packaging.py", "controller/daemon.py"):
        assert needed in names, needed
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_wheel_installs_into_a_fresh_virtualenv_and_both_commands_run(dists, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py, bindir = env_dir / "bin" / "python", env_dir / "bin"
    proc = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           str(dists["wheel"])], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, _tail(proc)

    clean_env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    version = subprocess.run([bindir / "iscsi-ha", "--version"], capture_output=True, text=True,
                             timeout=60, env=clean_env)
    assert version.returncode == 0, _tail(version)
    assert VERSION in version.stdout + version.stderr

    cli = subprocess.run([bindir / "iscsi-cfg", "--help"], capture_output=True, text=True,
                         timeout=60, env=clean_env)
    assert cli.returncode == 0, _tail(cli)
    assert "usage" in cli.stdout.lower()

    # The installed names are the namespaced ones only, and the data files land in the prefix.
    probe = subprocess.run(
        [py, "-c", "import importlib.util as u, iscsi_ha.controller, iscsi_ha.exporter; "
                   "print(u.find_spec('controller'), u.find_spec('exporter'))"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean_env)
    assert probe.stdout.split() == ["None", "None"], _tail(probe)
    assert (env_dir / "share/iscsi-ha/iscsi-ha.service").read_bytes() == UNIT.read_bytes()
    assert (env_dir / "share/iscsi-ha/iscsi-ha.yaml").read_bytes() == EXAMPLE.read_bytes()


# ------------------------------------------------------------------------------ systemd unit


def unit_entries(text: str) -> list:
    """(section, key, value) for every assignment; systemd allows repeated keys."""
    entries, section = [], None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(key: str) -> list:
    return [v for _, k, v in unit_entries(UNIT.read_text()) if k == key]


# The systemd release that introduced each directive (systemd's NEWS and man pages). The dom0 of
# XCP-ng 8.x / XenServer 8 runs systemd 219: every directive the unit uses must be at most that,
# or the dom0 logs "Unknown lvalue" and silently drops the setting (newer spellings such as
# ReadWritePaths=, 231, exist for the same job).
DIRECTIVE_SINCE = {
    "Description": 1, "Wants": 1, "After": 1, "Before": 1, "WantedBy": 1, "Type": 1,
    "ExecStart": 1, "ExecReload": 1, "Environment": 1, "KillMode": 1, "TimeoutStopSec": 188,
    "Restart": 1, "RestartSec": 1, "StartLimitInterval": 1, "RestartPreventExitStatus": 189,
    "LimitNOFILE": 1, "OOMScoreAdjust": 1, "NoNewPrivileges": 187, "PrivateTmp": 1,
    "ProtectHome": 214, "ProtectSystem": 214, "ReadWriteDirectories": 1,
    "RestrictAddressFamilies": 211, "SystemCallArchitectures": 213, "CapabilityBoundingSet": 1,
    # Known newer ones, listed so that adding them fails with the reason below.
    "ReadWritePaths": 231, "ProtectKernelTunables": 232, "ProtectKernelModules": 232,
    "ProtectControlGroups": 232, "MemoryDenyWriteExecute": 231, "RestrictRealtime": 231,
    "LockPersonality": 235, "StateDirectory": 235, "ProtectHostname": 242,
    "ProtectKernelLogs": 244, "ProtectClock": 245, "StartLimitIntervalSec": 230,
}
DOM0_SYSTEMD = 219


def test_unit_directives_are_all_known_to_the_dom0_systemd():
    for section, key, _ in unit_entries(UNIT.read_text()):
        assert key in DIRECTIVE_SINCE, f"[{section}] {key}: add it to DIRECTIVE_SINCE"
        assert DIRECTIVE_SINCE[key] <= DOM0_SYSTEMD, (
            f"{key}= needs systemd {DIRECTIVE_SINCE[key]}; the dom0 has {DOM0_SYSTEMD}")


def test_stopping_or_restarting_the_service_never_kills_tgtd():
    # tgtd is started by the controller, so it is in the unit's cgroup: only KillMode=process
    # keeps a stop/restart (RPM upgrade) from taking the LUNs away from running VMs.
    assert unit_values("KillMode") == ["process"]
    assert unit_values("Restart") == ["on-failure"]
    assert unit_values("RestartPreventExitStatus") == ["2"]  # daemon.py: 2 = invalid config
    assert unit_values("ExecStart")[0].startswith("/opt/iscsi-ha/bin/iscsi-ha run --config ")


def test_unit_starts_after_network_and_toolstack_without_depending_on_the_toolstack():
    after = " ".join(unit_values("After")).split()
    assert "network-online.target" in after and "xapi.service" in after
    assert "network-online.target" in " ".join(unit_values("Wants")).split()
    for strong in ("Requires", "BindsTo", "PartOf", "Requisite"):
        assert not any("xapi" in v for v in unit_values(strong)), strong


def test_unit_hardening_leaves_what_the_controller_needs():
    keys = {k for _, k, _ in unit_entries(UNIT.read_text())}
    assert not keys & {"PrivateNetwork", "PrivateDevices", "ProtectKernelModules",
                       "ProtectKernelTunables", "DynamicUser", "User"}
    assert unit_values("ProtectSystem") in ([], ["full"], ["yes"], ["true"])
    caps = set(" ".join(unit_values("CapabilityBoundingSet")).split())
    assert {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_SYS_MODULE"} <= caps
    families = set(" ".join(unit_values("RestrictAddressFamilies")).split())
    assert {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"} <= families

    # Every path the controller writes by default must be writable under ProtectSystem=full,
    # which makes /usr, /boot and /etc read-only.
    from iscsi_ha.controller.config import PathsConfig

    writable = " ".join(unit_values("ReadWriteDirectories")).split()
    paths = PathsConfig()
    for path in (paths.state_dir, paths.status_file, paths.control_socket):
        protected = path.startswith(("/usr/", "/boot/", "/etc/"))
        assert not protected or any(path.startswith(w.rstrip("/") + "/") for w in writable), path


@pytest.mark.tools
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    # verify also checks that ExecStart exists: point it at a binary this machine has.
    unit = tmp_path / "iscsi-ha.service"
    unit.write_text(UNIT.read_text().replace("/opt/iscsi-ha/bin/iscsi-ha", "/bin/true", 1))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60)
    assert proc.stderr.strip() == "", proc.stderr
    # The check can fail: a misspelt value in the same file is reported.
    bad = tmp_path / "bad.service"
    bad.write_text(unit.read_text().replace("ProtectSystem=full", "ProtectSystem=fulll"))
    proc = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True,
                          text=True, timeout=60)
    assert "ProtectSystem" in proc.stderr or "protect system" in proc.stderr.lower()


# ----------------------------------------------------------------------------------- the RPM


@pytest.fixture(scope="module")
def rpm(dists, dirs):
    if shutil.which("rpmbuild") is None:
        if os.environ.get("CI"):
            pytest.fail("rpmbuild missing: CI must install the Debian packages rpm and patchelf")
        pytest.skip("rpmbuild missing (apt-get install rpm patchelf)")
    proc = build(["rpm-tree", "rpm"], dirs, timeout=600)
    assert proc.returncode == 0, _tail(proc)
    path = dirs["out"] / RPM_NAME
    assert path.is_file(), proc.stdout
    info = json.loads((dirs["work"] / "stage-info.json").read_text())
    return {"path": path, "info": info, "log": proc.stdout}


def rpm_query(rpm_path: Path, *args: str) -> str:
    proc = subprocess.run(["rpm", "-qp", *args, str(rpm_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_rpm_inspection_passes_and_the_payload_runs_at_opt_iscsi_ha(rpm, dirs):
    proc = build(["inspect"], dirs)
    assert proc.returncode == 0, _tail(proc, 6000)
    assert "all checks passed" in proc.stdout


def test_rpm_files_unit_and_noreplace_config(rpm):
    files = set(rpm_query(rpm["path"], "-l").split())
    for path in ("/opt/iscsi-ha/bin/iscsi-ha", "/opt/iscsi-ha/bin/iscsi-cfg",
                 "/opt/iscsi-ha/python/bin/python3", "/usr/lib/systemd/system/iscsi-ha.service",
                 "/usr/bin/iscsi-cfg", "/etc/iscsi-ha/iscsi-ha.yaml", "/etc/iscsi-ha/state"):
        assert path in files, path
    assert rpm_query(rpm["path"], "--configfiles").split() == ["/etc/iscsi-ha/iscsi-ha.yaml"]
    flags = dict(
        reversed(line.split(" ", 1)) for line in rpm_query(
            rpm["path"], "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]").splitlines())
    assert "c" in flags["/etc/iscsi-ha/iscsi-ha.yaml"]
    assert "n" in flags["/etc/iscsi-ha/iscsi-ha.yaml"]  # noreplace: upgrades keep edits
    assert not any(p.startswith(("/usr/lib/python", "/usr/lib64/python")) for p in files)


def test_python_requires_admits_the_bundled_interpreter(rpm, dists):
    from packaging.specifiers import SpecifierSet

    with zipfile.ZipFile(dists["wheel"]) as zf:
        metadata = zf.read(f"iscsi_ha-{VERSION}.dist-info/METADATA").decode()
    spec = SpecifierSet(re.search(r"^Requires-Python: (.+)$", metadata, re.M).group(1))
    bundled = rpm["info"]["python_version"]
    assert bundled in spec, f"bundled Python {bundled} not in Requires-Python {spec}"


def scriptlet(rpm_path: Path, tag: str) -> str:
    return rpm_query(rpm_path, "--qf", f"%{{{tag}}}")


def run_scriptlet(body: str, arg: int, tmp_path: Path, enabled=("tgtd.service",)):
    """Run a scriptlet as rpm would (sh, $1 = package count) with a recording systemctl."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    log = tmp_path / "systemctl.log"
    log.write_text("")
    (fake / "systemctl").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'if [ "$1" = is-enabled ]; then\n'
        '  case " ' + " ".join(enabled) + ' " in *" $2 "*) echo enabled ;; *) echo disabled ;;'
        " esac\nfi\nexit 0\n")
    (fake / "systemctl").chmod(0o755)
    proc = subprocess.run(["sh", "-c", body, "iscsi-ha", str(arg)], capture_output=True,
                          text=True, timeout=60, env={"PATH": f"{fake}:/usr/sbin:/usr/bin:/bin"})
    return proc, log.read_text().splitlines()


def test_rpm_scriptlets_handle_the_unit_and_leave_other_services_to_the_operator(rpm, tmp_path):
    scripts = rpm_query(rpm["path"], "--scripts")
    for section in ("postinstall", "preuninstall", "postuninstall"):
        body = scripts.split(f"{section} scriptlet", 1)[1].split("scriptlet (using", 1)[0]
        assert "iscsi-ha.service" in body, section

    post = scriptlet(rpm["path"], "POSTIN")
    proc, calls = run_scriptlet(post, 1, tmp_path)
    assert proc.returncode == 0, _tail(proc)
    assert "preset iscsi-ha.service" in calls
    assert {"is-enabled tgtd.service", "is-enabled drbd.service"} <= set(calls)
    # Only reads and the preset: the host's tgtd/drbd boot setup is reported, never changed.
    assert not [c for c in calls if c.split()[0] not in ("preset", "is-enabled")], calls
    assert "tgtd.service is enabled at boot" in proc.stdout
    assert "drbd.service is enabled" not in proc.stdout
    assert "systemctl enable --now iscsi-ha" in proc.stdout

    proc, calls = run_scriptlet(post, 2, tmp_path, enabled=())  # upgrade
    assert proc.returncode == 0 and calls == ["is-enabled tgtd.service", "is-enabled drbd.service"]

    preun = scriptlet(rpm["path"], "PREUN")
    proc, calls = run_scriptlet(preun, 1, tmp_path)  # upgrade: the controller keeps running
    assert proc.returncode == 0 and calls == []
    proc, calls = run_scriptlet(preun, 0, tmp_path)  # removal
    assert calls == ["--no-reload disable iscsi-ha.service", "stop iscsi-ha.service"]
    assert "left as they are" in proc.stdout

    postun = scriptlet(rpm["path"], "POSTUN")
    proc, calls = run_scriptlet(postun, 1, tmp_path)
    assert calls == ["daemon-reload", "try-restart iscsi-ha.service"]
    proc, calls = run_scriptlet(postun, 0, tmp_path)
    assert calls == ["daemon-reload"]


def test_rpm_refuses_to_install_over_the_legacy_shell_implementation(rpm, tmp_path):
    pre = scriptlet(rpm["path"], "PREIN")
    proc, _ = run_scriptlet(pre, 1, tmp_path)
    if os.path.exists("/etc/init.d/iscsi-ha"):
        pytest.skip("this machine has a legacy /etc/init.d/iscsi-ha")
    assert proc.returncode == 0, _tail(proc)
    # The legacy init script, made visible only inside a private mount namespace.
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("mount namespaces unavailable")
    script = ("mount -t tmpfs legacy-init /etc/init.d && touch /etc/init.d/iscsi-ha && "
              'exec sh -c "$0" iscsi-ha 1')
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script, pre], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert "legacy iscsi-ha" in proc.stderr
