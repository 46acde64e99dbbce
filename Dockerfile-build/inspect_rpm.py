"""Check a built iscsi-ha RPM the way a dom0 would meet it, and run its payload where it belongs.

Static checks (``rpm -qp``), each printed as ``ok``/``FAIL``/``warn``:

* the files that make the product: the controller and CLI entry points, the bundled interpreter,
  the systemd unit (identical to ``packaging/iscsi-ha.service``), the example configuration as
  ``%config(noreplace)``, the ``iscsi-cfg`` link on PATH;
* the scriptlets handle the unit, and never disable another package's service;
* nothing the dom0's rpm 4.11 cannot install: an xz or gzip payload, only ``rpmlib()`` features
  rpm 4.11 has, no glibc symbol version above ``MAX_GLIBC`` (2.17; audit_rpm.py checks every file
  and asks rpm itself against the EL7 base);
* the private libraries stay private: no shared-library ``Provides``.

Then the payload is unpacked (rpm2cpio, read here as "newc" cpio: no cpio binary needed) and, in a
private mount namespace with a tmpfs over /opt, bind-mounted at /opt/iscsi-ha, its real path, where
``iscsi-ha --version``, ``iscsi-cfg --help`` and the imports of every dependency must work: that
proves the relocated interpreter, its RUNPATHs, the venv and the shebangs, not just the file list.
Where mount namespaces are not allowed (an unprivileged container build) that run is skipped
with a note.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

# rpmlib() features of rpm 4.11 (CentOS 7), from `rpm --querytags`/`rpm --showrc` there.
RPM411_FEATURES = {
    "BuiltinLuaScripts",
    "CompressedFileNames",
    "ConcurrentAccess",
    "ExplicitPackageProvide",
    "FileCaps",
    "FileDigests",
    "HeaderLoadSortsTags",
    "PartialHardlinkSets",
    "PayloadFilesHavePrefix",
    "PayloadIsBzip2",
    "PayloadIsLzma",
    "PayloadIsXz",
    "ScriptletExpansion",
    "ScriptletInterpreterArgs",
    "TildeInVersions",
    "VersionedDependencies",
}
IMPORT_CHECK = (
    "import os, sys, ssl, json, iscsi_ha.controller, iscsi_ha.exporter, yaml, bcrypt, XenAPI, "
    "apscheduler, prometheus_client, requests; n = os.path.normpath; "
    "print(n(sys.prefix), n(sys.base_prefix), sys.version.split()[0], ssl.OPENSSL_VERSION)"
)


class Report:
    def __init__(self) -> None:
        self.failures = 0

    def check(self, ok: bool, what: str, detail: str = "", warn_only: bool = False) -> bool:
        tag = "ok  " if ok else ("warn" if warn_only else "FAIL")
        if not ok and not warn_only:
            self.failures += 1
        print(f"  {tag} {what}" + (f": {detail}" if detail and not ok else ""))
        return ok


def rpmq(rpm: Path, *args: str) -> str:
    proc = subprocess.run(
        ["rpm", "-qp", *args, str(rpm)], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"inspect_rpm: cannot read `rpm -qp {' '.join(args)}`: {proc.stderr.strip()!r}"
        )
    return proc.stdout


def scriptlets(rpm: Path) -> dict:
    return {
        name: rpmq(rpm, "--qf", f"%{{{tag}}}")
        for name, tag in (
            ("pre", "PREIN"),
            ("post", "POSTIN"),
            ("preun", "PREUN"),
            ("postun", "POSTUN"),
        )
    }


def glibc_versions(requires: str) -> list:
    found = re.findall(r"\(GLIBC_(\d+(?:\.\d+)+)\)", requires)
    return sorted({tuple(int(x) for x in v.split(".")) for v in found})


def unpack_newc(rpm: Path, dest: Path) -> int:
    """Extract the payload of ``rpm`` into ``dest``; returns the number of entries."""
    data = subprocess.run(
        ["rpm2cpio", str(rpm)], capture_output=True, check=True, timeout=300
    ).stdout
    pos, count = 0, 0
    while True:
        if data[pos : pos + 6] != b"070701":
            raise SystemExit(
                f"inspect_rpm: unexpected cpio header at {pos}: {data[pos : pos + 6]!r}"
            )
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        pos = (name_start + namesize + 3) & ~3
        body = data[pos : pos + filesize]
        pos = (pos + filesize + 3) & ~3
        if name == "TRAILER!!!":
            return count
        count += 1
        target = dest / name.lstrip("./").lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if stat.S_ISDIR(mode):
            target.mkdir(exist_ok=True)
        elif stat.S_ISLNK(mode):
            target.symlink_to(body.decode())
        elif stat.S_ISREG(mode):
            target.write_bytes(body)
        else:
            continue
        if not stat.S_ISLNK(mode):
            target.chmod(stat.S_IMODE(mode) | (0o700 if stat.S_ISDIR(mode) else 0))


def run_in_place(root: Path, prefix: str, report: Report) -> None:
    """Run the unpacked payload at ``prefix`` inside a private mount namespace."""
    if (
        shutil.which("unshare") is None
        or subprocess.run(
            ["unshare", "--mount", "true"], capture_output=True, timeout=30
        ).returncode
        != 0
    ):
        print("  note mount namespaces unavailable here: payload not run at its real path")
        return
    parent = os.path.dirname(prefix)
    script = (
        "set -e; mount --make-rprivate /; "
        f"mount -t tmpfs iscsi-ha-inspect {parent}; mkdir -p {prefix}; "
        f"mount --bind {root}{prefix} {prefix}; "
        f'echo "version: $({prefix}/bin/iscsi-ha --version 2>&1)"; '
        f"{prefix}/bin/iscsi-cfg --help >/dev/null 2>&1 && echo 'cli: ok' || echo 'cli: FAILED'; "
        f"echo \"imports: $({prefix}/bin/python -c '{IMPORT_CHECK}' 2>&1)\""
    )
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    out = proc.stdout + proc.stderr
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    version = lines.get("version", "")
    report.check(
        proc.returncode == 0
        and bool(re.search(r"\d+\.\d+", version))
        and "Traceback" not in version,
        f"{prefix}/bin/iscsi-ha --version runs at its real path",
        out.strip()[-400:],
    )
    report.check(
        lines.get("cli") == "ok", f"{prefix}/bin/iscsi-cfg --help runs", out.strip()[-400:]
    )
    imports = lines.get("imports", "").split()
    report.check(
        imports[:2] == [prefix, f"{prefix}/python"],
        "bundled interpreter and venv resolve to their installed paths, deps import",
        lines.get("imports", out)[-400:],
    )
    print(
        f"  info payload ran: iscsi-ha {version.strip()}; Python "
        f"{' '.join(imports[2:3])}, {' '.join(imports[3:])}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rpm", required=True)
    ap.add_argument("--prefix", default="/opt/iscsi-ha")
    ap.add_argument("--unit", required=True, help="packaging/iscsi-ha.service, to compare")
    ap.add_argument("--work", required=True, help="scratch directory for the unpacked payload")
    args = ap.parse_args()
    rpm, prefix = Path(args.rpm), args.prefix
    max_glibc = tuple(int(x) for x in os.environ.get("MAX_GLIBC", "2.17").split("."))
    report = Report()

    print(f"== inspecting {rpm.name} ({rpm.stat().st_size / 2**20:.1f} MiB)")
    info = rpmq(
        rpm, "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{SIZE} %{PAYLOADCOMPRESSOR}\n"
    ).split()
    print(
        f"  info {info[0]}-{info[1]}-{info[2]}.{info[3]}, installed size "
        f"{int(info[4]) / 2**20:.1f} MiB, payload {info[5]}"
    )
    report.check(info[5] in ("xz", "gzip"), "payload compression readable by rpm 4.11", info[5])

    files = {}
    for line in rpmq(
        rpm, "--qf", "[%{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILENAMES}\n]"
    ).splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3:
            files[parts[2]] = (parts[0], parts[1])
    print(f"  info {len(files)} paths in the package")
    for path in (
        f"{prefix}/bin/iscsi-ha",
        f"{prefix}/bin/iscsi-cfg",
        f"{prefix}/bin/python",
        f"{prefix}/pyvenv.cfg",
        f"{prefix}/python/bin/python3",
        f"{prefix}/share/iscsi-ha/iscsi-ha.yaml",
        "/usr/lib/systemd/system/iscsi-ha.service",
        "/usr/bin/iscsi-cfg",
        "/etc/iscsi-ha/state",
    ):
        report.check(path in files, f"contains {path}")
    flags = files.get("/etc/iscsi-ha/iscsi-ha.yaml", ("", ""))[0]
    report.check(
        "c" in flags and "n" in flags,
        "/etc/iscsi-ha/iscsi-ha.yaml is %config(noreplace)",
        f"flags {flags!r}",
    )
    report.check(
        not any(p.startswith(("/usr/lib/python", "/usr/lib64/python")) for p in files),
        "nothing installed into the host's Python",
    )

    scripts = scriptlets(rpm)
    for name in ("post", "preun", "postun"):
        report.check("iscsi-ha.service" in scripts[name], f"%{name} handles iscsi-ha.service")
    report.check('"$1" -eq 0' in scripts["preun"], "%preun stops the service on removal only")
    disabling = [
        line.strip()
        for body in scripts.values()
        for line in body.splitlines()
        if line.strip().startswith("systemctl")
        and " disable " in line
        and "iscsi-ha.service" not in line
    ]
    report.check(
        not disabling, "scriptlets never disable another package's service", "; ".join(disabling)
    )

    requires = rpmq(rpm, "--requires")
    features = set(re.findall(r"rpmlib\((\w+)\)", requires))
    report.check(
        features <= RPM411_FEATURES,
        "only rpmlib() features rpm 4.11 has",
        ", ".join(sorted(features - RPM411_FEATURES)),
    )
    versions = glibc_versions(requires)
    newest = ".".join(map(str, versions[-1])) if versions else "none"
    report.check(
        not versions or versions[-1] <= max_glibc,
        f"needs glibc <= {'.'.join(map(str, max_glibc))} (needs {newest})",
        "not installable on a dom0 (audit_rpm.py names the files)",
    )
    libs = sorted({m for m in re.findall(r"^(\S+\.so[.\d]*)\(", requires, re.M)})
    print(f"  info system libraries required: {', '.join(libs) or 'none'}")
    provides = [p for p in rpmq(rpm, "--provides").splitlines() if p.strip()]
    report.check(
        all(p.split()[0] in ("iscsi-ha", "iscsi-ha(x86-64)", "config(iscsi-ha)") for p in provides),
        "provides nothing but itself (bundled libraries stay private)",
        ", ".join(provides),
    )

    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    root = work / "root"
    root.mkdir(parents=True)
    count = unpack_newc(rpm, root)
    print(f"  info payload unpacked: {count} entries")
    unit = root / "usr/lib/systemd/system/iscsi-ha.service"
    report.check(
        unit.is_file() and unit.read_bytes() == Path(args.unit).read_bytes(),
        "packaged unit is packaging/iscsi-ha.service",
    )
    run_in_place(root, prefix, report)

    verdict = f"{report.failures} failed" if report.failures else "all checks passed"
    print(f"== inspect: {verdict}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
