"""Packaging, end to end: sdist and wheel, a clean install, the systemd unit, and the dom0 RPM.

Everything here runs the real tools. ``Dockerfile-build/build.sh`` (what ``make rpm`` and the
Dockerfile run) builds the sdist and the wheel with ``python -m build``; the bundled CPython for
glibc 2.17 with ``build_python.sh`` (zig cc over Debian's sources; taken from the build cache,
``$ISCSI_HA_BUILD_CACHE`` or ``.cache/build``, when it is there); the /opt/iscsi-ha tree, rpmbuild,
the audit against the EL7 base (readelf on every ELF, ``rpm -i --test`` against capability models)
and the inspection. The payload is then unpacked into a scratch root and run at /opt/iscsi-ha in a
private mount namespace (lab/payload.py): ``--version``, ``check-config``, ``once --dry-run
--json`` against a stand-in drbdadm, and the namespace lab's two controllers. rpm installs,
upgrades and removes the package in a chroot whose ``/bin/sh`` is busybox and whose systemctl
records its calls, so the real scriptlets run with rpm's own arguments. The unit is checked by
``systemd-analyze verify`` and against the directive list of systemd 219 (the dom0's).

Nothing is installed on this machine. Time: with the interpreter cached, about 2 minutes (wheel
~15 s, tree ~20 s, rpmbuild ~30 s twice, audit ~10 s, the chroot ~15 s, the lab ~15 s); a cold
interpreter build adds its CPU minutes (README, results table) once per cache; under .ci/run it
has been running in the background since the suite started. The interrupted-build test runs the
real script with stand-in compiles (~10 s).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
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


def build(steps, dirs, timeout=300, extra_env=None) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        OUT=str(dirs["out"]),
        WORK=str(dirs["work"]),
        **(extra_env or {}),
    )
    return subprocess.run(
        ["bash", str(BUILD_SH), *steps], capture_output=True, text=True, env=env, timeout=timeout
    )


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
    for module in (
        "controller/__init__.py",
        "controller/daemon.py",
        "controller/model.py",
        "controller/systems/runner.py",
        "controller/systems/drbd/adapter.py",
        "exporter/__init__.py",
    ):
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
    for needed in (
        "setup.py",
        "MANIFEST.in",
        "examples/iscsi-ha.yaml",
        "packaging/iscsi-ha.service",
        "packaging/iscsi-ha.spec",
        "Dockerfile-build/Dockerfile",
        "Dockerfile-build/build.sh",
        "Dockerfile-build/stage_tree.py",
        "Dockerfile-build/inspect_rpm.py",
        "Dockerfile-build/build_python.sh",
        "Dockerfile-build/python-sources.txt",
        "Dockerfile-build/audit_rpm.py",
        "Dockerfile-build/make_repo.sh",
        "packaging/el7-provides.txt",
        "lab/payload.py",
        "docs/migrate.md",
        "docs/install.md",
        "tests/test_packaging.py",
        "controller/daemon.py",
    ):
        assert needed in names, needed
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_wheel_installs_into_a_fresh_virtualenv_and_both_commands_run(dists, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py, bindir = env_dir / "bin" / "python", env_dir / "bin"
    proc = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(dists["wheel"])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, _tail(proc)

    clean_env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    version = subprocess.run(
        [bindir / "iscsi-ha", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env,
    )
    assert version.returncode == 0, _tail(version)
    assert VERSION in version.stdout + version.stderr

    cli = subprocess.run(
        [bindir / "iscsi-cfg", "--help"], capture_output=True, text=True, timeout=60, env=clean_env
    )
    assert cli.returncode == 0, _tail(cli)
    assert "usage" in cli.stdout.lower()

    # The installed names are the namespaced ones only, and the data files land in the prefix.
    probe = subprocess.run(
        [
            py,
            "-c",
            "import importlib.util as u, iscsi_ha.controller, iscsi_ha.exporter; "
            "print(u.find_spec('controller'), u.find_spec('exporter'))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env,
    )
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
    "Description": 1,
    "Wants": 1,
    "After": 1,
    "Before": 1,
    "WantedBy": 1,
    "Type": 1,
    "ExecStart": 1,
    "ExecReload": 1,
    "Environment": 1,
    "KillMode": 1,
    "TimeoutStopSec": 188,
    "Restart": 1,
    "RestartSec": 1,
    "StartLimitInterval": 1,
    "RestartPreventExitStatus": 189,
    "LimitNOFILE": 1,
    "OOMScoreAdjust": 1,
    "NoNewPrivileges": 187,
    "PrivateTmp": 1,
    "ProtectHome": 214,
    "ProtectSystem": 214,
    "ReadWriteDirectories": 1,
    "RestrictAddressFamilies": 211,
    "SystemCallArchitectures": 213,
    "CapabilityBoundingSet": 1,
    "UMask": 1,
    # Known newer ones, listed so that adding them fails with the reason below.
    "ReadWritePaths": 231,
    "ProtectKernelTunables": 232,
    "ProtectKernelModules": 232,
    "ProtectControlGroups": 232,
    "MemoryDenyWriteExecute": 231,
    "RestrictRealtime": 231,
    "LockPersonality": 235,
    "StateDirectory": 235,
    "ProtectHostname": 242,
    "ProtectKernelLogs": 244,
    "ProtectClock": 245,
    "StartLimitIntervalSec": 230,
}
DOM0_SYSTEMD = 219


def test_unit_directives_are_all_known_to_the_dom0_systemd():
    for section, key, _ in unit_entries(UNIT.read_text()):
        assert key in DIRECTIVE_SINCE, f"[{section}] {key}: add it to DIRECTIVE_SINCE"
        assert DIRECTIVE_SINCE[key] <= DOM0_SYSTEMD, (
            f"{key}= needs systemd {DIRECTIVE_SINCE[key]}; the dom0 has {DOM0_SYSTEMD}"
        )


# Directives systemd 219 accepts but enforces only when built with seccomp, which the dom0's is
# not (../shared/dom0 notes; systemd's own docs: these are seccomp filters).
NEEDS_SECCOMP = {"SystemCallFilter", "SystemCallArchitectures", "RestrictAddressFamilies"}


def test_install_guide_names_the_directives_the_dom0_ignores():
    keys = {k for _, k, _ in unit_entries(UNIT.read_text())}
    guide = (REPO / "docs" / "install.md").read_text()
    section = guide.split("### What the unit's sandbox allows", 1)[1].split("\n## ", 1)[0]
    for key in keys & NEEDS_SECCOMP:
        row = next((line for line in section.splitlines() if f"`{key}=" in line), "")
        assert "ignored" in row, f"docs/install.md must say that the dom0 ignores {key}="
    assert "does not enforce" in section or "not enforce" in section


def test_unit_keeps_what_it_creates_private_and_hides_home_directories():
    assert unit_values("UMask") == ["0077"]
    assert unit_values("ProtectHome") == ["yes"]


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
    assert not keys & {
        "PrivateNetwork",
        "PrivateDevices",
        "ProtectKernelModules",
        "ProtectKernelTunables",
        "DynamicUser",
        "User",
    }
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
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.stderr.strip() == "", proc.stderr
    # The check can fail: a misspelt value in the same file is reported.
    bad = tmp_path / "bad.service"
    bad.write_text(unit.read_text().replace("ProtectSystem=full", "ProtectSystem=fulll"))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert "ProtectSystem" in proc.stderr or "protect system" in proc.stderr.lower()


# ----------------------------------------------------------------------------------- the RPM


@pytest.fixture(scope="module")
def rpm(dists, dirs):
    """The whole `make rpm` pipeline after the wheel: the bundled interpreter (built, or taken
    from ISCSI_HA_BUILD_CACHE / .cache/build), the tree, rpmbuild, the audit, the inspection and
    the publication into OUT. A cold build takes minutes, a cached one well under a minute."""
    for tool in ("rpmbuild", "readelf", "dpkg-source", "tclsh"):
        if shutil.which(tool) is None:
            if os.environ.get("CI"):
                pytest.fail(f"{tool} missing: CI must run scripts/setup-env.sh")
            pytest.skip(f"{tool} missing (scripts/setup-env.sh installs it)")
    proc = build(["python", "rpm-tree", "rpm", "audit", "inspect", "publish"], dirs, timeout=1800)
    assert proc.returncode == 0, _tail(proc, 8000)
    path = dirs["out"] / RPM_NAME
    assert path.is_file(), proc.stdout
    info = json.loads((dirs["work"] / "stage-info.json").read_text())
    return {"path": path, "info": info, "log": proc.stdout + proc.stderr}


@pytest.fixture(scope="module")
def payload(rpm, tmp_path_factory):
    """The RPM's payload unpacked into a scratch root (nothing installed on this machine)."""
    sys.path.insert(0, str(REPO / "Dockerfile-build"))
    from inspect_rpm import unpack_newc

    root = tmp_path_factory.mktemp("payload")
    assert unpack_newc(rpm["path"], root) > 100
    return root


def in_payload(root: Path, *argv: str, timeout=120, **kw) -> subprocess.CompletedProcess:
    """Run argv with root's /opt/iscsi-ha mounted at /opt/iscsi-ha (lab/payload.py)."""
    from lab.payload import payload_argv

    return subprocess.run(
        payload_argv(root, list(argv)), capture_output=True, text=True, timeout=timeout, **kw
    )


def test_rpm_build_audit_and_inspection_pass(rpm):
    log = rpm["log"]
    assert "every ELF file needs at most GLIBC_2.17 and only EL7 libraries" in log, log[-4000:]
    assert "no failed dependency on the el7 model" in log
    assert "no failed dependency on the el7+xs8 model" in log
    assert "== audit: passed" in log
    assert "== inspect: all checks passed" in log
    # The interpreter is the one built from Debian's sources, and the wheels were chosen for
    # glibc 2.17: a wheel tagged for a newer glibc only would not have been downloadable.
    assert rpm["info"]["python_version"] == "3.11.2"
    assert rpm["info"]["wheels"], rpm["info"]
    for wheel in rpm["info"]["wheels"]:
        tags = wheel[:-4].split("-")[-1]
        assert (
            tags == "any"
            or "manylinux2014_x86_64" in tags
            or "manylinux_2_17" in tags
            or "manylinux1" in tags
            or "manylinux_2_5" in tags
        ), wheel


def test_rpm_requires_nothing_a_dom0_base_lacks(rpm):
    requires = [r.strip() for r in rpm_query(rpm["path"], "--requires").splitlines() if r.strip()]
    sys.path.insert(0, str(REPO / "Dockerfile-build"))
    from audit_rpm import read_models

    base = set(read_models(REPO / "packaging" / "el7-provides.txt")["el7"])
    # rpmlib() features are rpm's own; /opt/iscsi-ha/... and config(iscsi-ha) the package's.
    outside = [
        r
        for r in requires
        if r not in base
        and r.split()[0] not in base
        and not r.startswith(("rpmlib(", "/opt/iscsi-ha/", "config(iscsi-ha)"))
    ]
    assert outside == [], outside
    assert not any("/usr/local/bin/python" in r for r in requires)


def make_bad_rpm(tmp_path: Path) -> Path:
    """A package holding this machine's /usr/bin/true: built for glibc 2.34+ (Debian 12)."""
    top = tmp_path / "bad"
    (top / "SPECS").mkdir(parents=True)
    (top / "SPECS" / "bad.spec").write_text(
        "Name: iscsi-ha\nVersion: 0.0.1\nRelease: 1\nSummary: bad\nLicense: none\n"
        "%global debug_package %{nil}\n%global __os_install_post %{nil}\n"
        "%global _binary_payload w2.xzdio\n"
        "%description\nbad\n%install\ninstall -D -m 0755 /usr/bin/true "
        "%{buildroot}/opt/iscsi-ha/bin/newer-true\n%files\n/opt/iscsi-ha/bin/newer-true\n"
    )
    proc = subprocess.run(
        [
            "rpmbuild",
            "-bb",
            "--define",
            f"_topdir {top}",
            "--define",
            f"_rpmdir {top}",
            "--define",
            "_build_name_fmt bad.rpm",
            str(top / "SPECS" / "bad.spec"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, _tail(proc)
    return top / "bad.rpm"


@pytest.mark.tools
def test_audit_fails_naming_the_file_and_the_symbol(tmp_path):
    bad = make_bad_rpm(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "Dockerfile-build" / "audit_rpm.py"),
            "--rpm",
            str(bad),
            "--provides",
            str(REPO / "packaging" / "el7-provides.txt"),
            "--work",
            str(tmp_path / "audit"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, _tail(proc)
    # readelf's finding: the file, the version and the symbol bound to it.
    assert re.search(
        r"FAIL /opt/iscsi-ha/bin/newer-true: needs GLIBC_2\.3[4-9] from libc\.so\.6 "
        r"for .*__libc_start_main",
        proc.stdout,
    ), proc.stdout
    # rpm's own finding, on both models.
    for model in ("el7", "el7+xs8"):
        assert re.search(
            rf"FAIL rpm -i --test on {re.escape(model)}: "
            r"libc\.so\.6\(GLIBC_2\.3[4-9]\)\(64bit\) is needed by",
            proc.stdout,
        )


def test_an_rpm_failing_the_audit_never_reaches_dist(rpm, dirs, tmp_path):
    work, out = tmp_path / "work", tmp_path / "dist"
    (work / "rpms").mkdir(parents=True)
    shutil.copy2(rpm["path"], work / "rpms" / RPM_NAME)
    # Pretend the dom0 had glibc 2.5: the real RPM now fails the audit, and publish never runs.
    proc = build(["audit", "publish"], {"out": out, "work": work}, extra_env={"MAX_GLIBC": "2.5"})
    assert proc.returncode != 0
    assert "needs GLIBC_2." in proc.stdout and "audit failed" in proc.stderr
    assert not out.exists() or not list(out.iterdir())
    # And publish alone refuses an RPM that has not passed the audit.
    proc = build(["publish"], {"out": out, "work": work})
    assert proc.returncode != 0 and "has not passed the audit" in proc.stderr
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.tools
def test_unreachable_source_package_fails_naming_package_and_version(tmp_path):
    pins = tmp_path / "python-sources.txt"
    real = (REPO / "Dockerfile-build" / "python-sources.txt").read_text()
    pins.write_text(re.sub(r"^python3\.11=.*$", "python3.11=3.11.2-6+deb12u99", real, flags=re.M))
    env = dict(os.environ, PYTHON_SOURCES=str(pins), ISCSI_HA_BUILD_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        ["bash", str(REPO / "Dockerfile-build" / "build_python.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode != 0
    assert "cannot fetch the source package python3.11 3.11.2-6+deb12u99" in proc.stderr, _tail(
        proc
    )
    assert not [p for p in (tmp_path / "cache").glob("python-*") if p.is_dir()], (
        "no cache entry for a failed build"
    )
    assert not list((tmp_path / "cache").glob("tmp-*"))


def _alive(pid: int) -> bool:
    """A process that still runs (a zombie waiting for init to reap it counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="build_python.sh reads /proc")
def test_a_terminated_build_stops_its_processes_and_leaves_no_tmp_dirs(tmp_path):
    """SIGTERM mid-build (CI's timeout, a Ctrl-C): every process of both library lanes stops,
    the build's tmp-* directory goes, the cache lock is free; tmp-* directories a SIGKILLed
    build left are removed by the next one. Real script and signals; the compiles are stand-ins
    (a `configure` that sleeps) so the test needs neither the network nor minutes of zig."""
    pins_text = (REPO / "Dockerfile-build" / "python-sources.txt").read_text()
    pins = dict(re.findall(r"^([a-z0-9.+-]+)=([^=\s]+)$", pins_text, re.M))
    cache, fake, pids = tmp_path / "cache", tmp_path / "bin", tmp_path / "pids"
    (cache / "src").mkdir(parents=True)
    fake.mkdir()
    for name, version in pins.items():  # sources "already downloaded" (a .dsc listing no files)
        (cache / "src" / f"{name}_{version.split(':')[-1]}.dsc").write_text("Files:\n")
    zig = cache / f"ziglang-{re.search(r'^ziglang==(.+)$', pins_text, re.M).group(1)}" / "bin"
    zig.mkdir(parents=True)
    (zig / "python").write_text('#!/bin/sh\n[ "$1" = -c ] && echo /bin/false\nexit 0\n')
    # dpkg-source -x DSC DIR: a tree whose configure scripts record their PID and sleep.
    (fake / "dpkg-source").write_text(
        '#!/bin/sh\nfor d; do :; done\nmkdir -p "$d"\n'
        f"printf '#!/bin/sh\\necho $$ >>{pids}\\nexec sleep 120\\n' >\"$d/configure\"\n"
        'cp "$d/configure" "$d/Configure"\nchmod +x "$d/configure" "$d/Configure"\n'
    )
    for f in fake.iterdir():
        f.chmod(0o755)
    (zig / "python").chmod(0o755)
    stale = [cache / "tmp-python-4375a2cc38529c00.hxKwLG", cache / "tmp-build.Ab12Cd"]
    for d in stale:
        (d / "openssl").mkdir(parents=True)
    env = dict(os.environ, ISCSI_HA_BUILD_CACHE=str(cache), PATH=f"{fake}:{os.environ['PATH']}")
    proc = subprocess.Popen(
        ["bash", str(REPO / "Dockerfile-build" / "build_python.sh")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        # Both lanes are in a step: openssl's Configure and zlib's configure are running.
        while not (pids.exists() and len(pids.read_text().split()) >= 2):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the lanes never started"
            time.sleep(0.05)
        running = [int(p) for p in pids.read_text().split()]
        tmp = [p.name for p in cache.glob("tmp-*")]
        assert [n for n in tmp if n.startswith("tmp-build.")], tmp
        assert not any(d.exists() for d in stale), tmp
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 143, err
        assert "TERM: stopping the build" in err, err
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in running) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in running if _alive(p)], "a configure of the build survived SIGTERM"
    finally:  # whatever the outcome, nothing of this test outlives it
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert not list(cache.glob("tmp-*")), sorted(p.name for p in cache.iterdir())
    assert not list(cache.glob("python-*")) and not list(cache.glob("lib-*"))
    # The lock is free: the next build would not wait.
    assert subprocess.run(["flock", "-n", str(cache / ".lock"), "true"]).returncode == 0


def test_bundled_interpreter_is_the_one_built_here_with_tls_and_ctypes(payload):
    proc = in_payload(
        payload,
        "/opt/iscsi-ha/bin/python",
        "-c",
        "import sys, ssl, ctypes, zlib, lzma, bz2, sqlite3; "
        "print(sys.prefix, sys.base_prefix, sys.version.split()[0], "
        "ssl.OPENSSL_VERSION.split()[1], ctypes.CDLL(None).getpid() > 0)",
    )
    assert proc.returncode == 0, _tail(proc)
    prefix, base, version, openssl, ctypes_ok = proc.stdout.split()
    assert (prefix, base, version) == ("/opt/iscsi-ha", "/opt/iscsi-ha/python", "3.11.2")
    pinned = re.search(
        r"^openssl=([\d.]+)-", (REPO / "Dockerfile-build" / "python-sources.txt").read_text(), re.M
    ).group(1)
    assert openssl == pinned and ctypes_ok == "True"


def test_payload_reports_its_version_and_checks_a_configuration(payload, tmp_path):
    proc = in_payload(payload, "/opt/iscsi-ha/bin/iscsi-ha", "--version")
    assert proc.returncode == 0 and VERSION in proc.stdout, _tail(proc)

    good = tmp_path / "good.yaml"
    good.write_text("resources: [r0]\nvip: {address: 10.99.77.3/24, interface: lo}\n")
    proc = in_payload(payload, "/opt/iscsi-ha/bin/iscsi-cfg", "check-config", str(good))
    assert proc.returncode == 0 and f"OK: {good}" in proc.stdout, _tail(proc)
    bad = tmp_path / "bad.yaml"
    bad.write_text("resources: [r0]\nvip: {address: 10.10.10.300/24}\n")
    proc = in_payload(payload, "/opt/iscsi-ha/bin/iscsi-cfg", "check-config", str(bad))
    assert proc.returncode == 2 and "vip.address" in proc.stderr, _tail(proc)


@pytest.mark.parametrize("scenario", ["master", "master-failover", "slave"])
def test_payload_runs_once_dry_run_against_a_stand_in_drbdadm(payload, tmp_path, scenario):
    """The shipped controller plans exactly what the tested one (this virtualenv) plans."""
    from test_once import plan_of, run_once

    from lab.payload import payload_argv

    (tmp_path / "venv").mkdir()
    (tmp_path / "rpm").mkdir()
    tested = run_once(tmp_path / "venv", scenario)
    shipped = run_once(
        tmp_path / "rpm", scenario, command=payload_argv(payload, ["/opt/iscsi-ha/bin/iscsi-ha"])
    )
    assert shipped.returncode == 0 and tested.returncode == 0, shipped.stderr + tested.stderr
    out = json.loads(shipped.stdout)
    assert out["dry_run"] is True and plan_of(out), out
    assert plan_of(out) == plan_of(json.loads(tested.stdout))


# ------------------------------------------------ install, upgrade, remove with rpm in a chroot

RECORDER = '#!/bin/sh\necho "$*" >> /{log}\n{extra}exit 0\n'


def fake_dom0_root(root: Path) -> None:
    """A chroot in which rpm can run the real scriptlets: busybox as /bin/sh, a systemctl that
    records its calls, and drbdadm/tgtadm/ip/arping that record any call (none may happen)."""
    busybox = shutil.which("busybox")
    for d in ("bin", "usr/bin", "usr/sbin", "sbin", "dev", "tmp", "var/tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    # The scriptlets send output to /dev/null; rpm writes them to /var/tmp first.
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    shutil.copy2(busybox, root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "usr/bin/systemctl").write_text(RECORDER.format(log="systemctl.log", extra=""))
    for tool in ("drbdadm", "tgtadm", "ip", "arping"):
        (root / "usr/sbin" / tool).write_text(RECORDER.format(log="storage.log", extra=""))
    for f in [root / "usr/bin/systemctl", *(root / "usr/sbin").iterdir()]:
        f.chmod(0o755)


def rpm_root(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["rpm", "--root", str(root), *args], capture_output=True, text=True, timeout=300
    )


def calls(root: Path) -> list:
    log = root / "systemctl.log"
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


@pytest.fixture(scope="module")
def rpm_release_2(rpm, dirs, tmp_path_factory):
    """The same tree packaged as release 2 with a changed default configuration."""
    work = tmp_path_factory.mktemp("release2")
    shutil.copytree(dirs["work"] / "stage", work / "stage", symlinks=True)
    shutil.copy2(dirs["work"] / "stage-info.json", work / "stage-info.json")
    example = work / "stage/opt/iscsi-ha/share/iscsi-ha/iscsi-ha.yaml"
    example.write_text(example.read_text() + "\n# release 2\n")
    proc = build(["rpm"], {"out": dirs["out"], "work": work}, extra_env={"RELEASE": "2"})
    assert proc.returncode == 0, _tail(proc)
    (path,) = (work / "rpms").glob("iscsi-ha-*-2.x86_64.rpm")
    return path


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="rpm --root runs scriptlets in a chroot: root only")
def test_install_upgrade_remove_keep_config_and_never_touch_storage(rpm, rpm_release_2, tmp_path):
    root = tmp_path / "dom0"
    fake_dom0_root(root)
    assert rpm_root(root, "--initdb").returncode == 0
    # --nodeps: this scratch root has no rpmdb of its own; the audit proved the dependencies.
    proc = rpm_root(root, "-i", "--nodeps", str(rpm["path"]))
    assert proc.returncode == 0, _tail(proc)
    assert calls(root) == [
        "preset iscsi-ha.service",
        "is-enabled tgtd.service",
        "is-enabled drbd.service",
    ]
    config = root / "etc/iscsi-ha/iscsi-ha.yaml"
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    assert (root / "opt/iscsi-ha/bin/iscsi-ha").is_file()
    edited = config.read_text() + "\n# the operator's edit\n"
    config.write_text(edited)

    # Upgrade: the new %post ($1=2), then the old %preun/%postun ($1=1): a try-restart, no stop.
    proc = rpm_root(root, "-U", "--nodeps", str(rpm_release_2))
    assert proc.returncode == 0, _tail(proc)
    upgrade = calls(root)
    assert "try-restart iscsi-ha.service" in upgrade, upgrade
    assert not [c for c in upgrade if c.startswith(("stop", "disable", "--no-reload disable"))]
    assert config.read_text() == edited  # %config(noreplace): the operator's file stays
    assert (root / "etc/iscsi-ha/iscsi-ha.yaml.rpmnew").read_text().endswith("# release 2\n")
    assert rpm_root(root, "-q", "iscsi-ha").stdout.strip().endswith("-2.x86_64")

    # Removal: the controller is disabled and stopped; the edited configuration is kept aside.
    proc = rpm_root(root, "-e", "--nodeps", "iscsi-ha")
    assert proc.returncode == 0, _tail(proc)
    assert calls(root) == [
        "--no-reload disable iscsi-ha.service",
        "stop iscsi-ha.service",
        "daemon-reload",
    ]
    assert "left as they are" in proc.stdout
    assert not (root / "opt/iscsi-ha/bin").exists()
    assert (root / "etc/iscsi-ha/iscsi-ha.yaml.rpmsave").read_text() == edited
    # Never once did a scriptlet run drbdadm, tgtadm, ip or arping.
    assert not (root / "storage.log").exists()


# ------------------------------------------------------------------------- the yum repository


def test_make_repo_writes_yum_metadata_and_a_disabled_repo_file(rpm, tmp_path):
    import gzip
    import xml.etree.ElementTree as ET

    if shutil.which("createrepo_c") is None:
        pytest.skip("createrepo_c missing (scripts/setup-env.sh installs createrepo-c)")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy2(rpm["path"], repo)
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "Dockerfile-build" / "make_repo.sh"),
            str(repo),
            "http://pool-files.example/iscsi-ha",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, _tail(proc)
    ns = {
        "r": "http://linux.duke.edu/metadata/repo",
        "c": "http://linux.duke.edu/metadata/common",
        "rpm": "http://linux.duke.edu/metadata/rpm",
    }
    repomd = ET.parse(repo / "repodata" / "repomd.xml").getroot()
    hrefs = {
        d.get("type"): d.find("r:location", ns).get("href") for d in repomd.findall("r:data", ns)
    }
    assert {"primary", "filelists", "other", "primary_db"} <= set(hrefs)
    # yum 3.4 (CentOS 7) reads gzip XML; newer createrepo_c defaults (zstd) it cannot.
    assert hrefs["primary"].endswith(".xml.gz")
    primary = ET.fromstring(gzip.decompress((repo / hrefs["primary"]).read_bytes()))
    (pkg,) = primary.findall("c:package", ns)
    assert pkg.find("c:name", ns).text == "iscsi-ha"
    assert pkg.find("c:location", ns).get("href") == RPM_NAME
    requires = {e.get("name") for e in pkg.findall("c:format/rpm:requires/rpm:entry", ns)}
    assert {"iproute", "iputils"} <= requires
    repo_file = (repo / "iscsi-ha.repo").read_text()
    assert "[iscsi-ha]" in repo_file and "baseurl=http://pool-files.example/iscsi-ha" in repo_file
    assert "enabled=0" in repo_file and "--enablerepo=iscsi-ha" in repo_file


def rpm_query(rpm_path: Path, *args: str) -> str:
    proc = subprocess.run(
        ["rpm", "-qp", *args, str(rpm_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_rpm_files_unit_and_noreplace_config(rpm):
    files = set(rpm_query(rpm["path"], "-l").split())
    for path in (
        "/opt/iscsi-ha/bin/iscsi-ha",
        "/opt/iscsi-ha/bin/iscsi-cfg",
        "/opt/iscsi-ha/python/bin/python3",
        "/usr/lib/systemd/system/iscsi-ha.service",
        "/usr/bin/iscsi-cfg",
        "/etc/iscsi-ha/iscsi-ha.yaml",
        "/etc/iscsi-ha/state",
    ):
        assert path in files, path
    assert rpm_query(rpm["path"], "--configfiles").split() == ["/etc/iscsi-ha/iscsi-ha.yaml"]
    flags = dict(
        reversed(line.split(" ", 1))
        for line in rpm_query(
            rpm["path"], "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]"
        ).splitlines()
    )
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
        " esac\nfi\nexit 0\n"
    )
    (fake / "systemctl").chmod(0o755)
    proc = subprocess.run(
        ["sh", "-c", body, "iscsi-ha", str(arg)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": f"{fake}:/usr/sbin:/usr/bin:/bin"},
    )
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
    script = (
        "mount -t tmpfs legacy-init /etc/init.d && touch /etc/init.d/iscsi-ha && "
        'exec sh -c "$0" iscsi-ha 1'
    )
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, pre], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "legacy iscsi-ha" in proc.stderr


# ------------------------------------------------------------- the namespace lab on the payload


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
@pytest.mark.skipif(
    not all(
        shutil.which(t) or os.path.exists(f"/usr/sbin/{t}")
        for t in ("tgtd", "tgtadm", "arping", "iscsi-inq")
    ),
    reason="needs tgt, iputils-arping and libiscsi-bin",
)
def test_namespace_lab_runs_both_controllers_from_the_payload(payload, monkeypatch):
    """ISCSI_HA_PAYLOAD (the option of `make demo` and tests/test_integration.py) in action:
    the two controllers are the RPM's, and the storage still follows the pool master."""
    from lab.demo import converged_on, move_pool_master, start_cluster, tgt_ports, wait_for
    from lab.netlab import Lab
    from lab.payload import ENV_VAR

    monkeypatch.setenv(ENV_VAR, str(payload))
    with Lab(tgt_ports=tgt_ports()) as lab:
        pids = start_cluster(lab)
        wait_for("node1 holds the storage", converged_on(lab, lab.node1), 30, lab)
        for pid in pids.values():
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            # The script's shebang made the payload's venv python the process image.
            assert argv[:2] == [b"/opt/iscsi-ha/bin/python", b"/opt/iscsi-ha/bin/iscsi-ha"], argv
        move_pool_master(lab, lab.node2)
        wait_for(
            "the storage follows the pool master to node2", converged_on(lab, lab.node2), 20, lab
        )
