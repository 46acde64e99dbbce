"""Audit a built iscsi-ha RPM against the dom0 it is for; exit 1 on any finding.

Two independent judges, both must be satisfied:

1. **Every ELF file in the payload** (``readelf -d -V --dyn-syms``): no symbol bound to a glibc
   version above ``--max-glibc`` (2.17, CentOS 7's), and every library it loads (``NEEDED``) and
   every symbol version it needs is a capability of the EL7 base or a library the payload carries
   itself. A finding names the file, and for a too-new glibc the symbols.
2. **rpm itself**: a scratch rpmdb holds one capability package that provides exactly the base
   (``packaging/el7-provides.txt``, the first part, then the first part plus the ``[xs8]`` part of
   XCP-ng 8.3 / XenServer 8); ``rpm -i --test --justdb`` of the RPM into it must report no failed
   dependency. That covers what (1) cannot see: shell and interpreter requirements, the
   ``Requires:`` of the spec, rpmlib features.

Usage: audit_rpm.py --rpm FILE --provides packaging/el7-provides.txt --work DIR
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from inspect_rpm import unpack_newc  # noqa: E402  (one payload reader for both tools)

XS8_MARKER = "[xs8]"
GLIBC = re.compile(r"^GLIBC_(\d+(?:\.\d+)+)$")


def read_models(path: Path) -> dict:
    """{"el7": [...], "el7+xs8": [...]}: the capabilities of each model of the dom0 base."""
    base, extra, in_extra = [], [], False
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == XS8_MARKER:
            in_extra = True
            continue
        (extra if in_extra else base).append(line)
    if not base or not in_extra:
        raise SystemExit(f"audit_rpm: {path}: expected capabilities, then a '{XS8_MARKER}' line")
    return {"el7": base, "el7+xs8": base + extra}


def is_elf(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def elf_needs(path: Path) -> dict:
    """NEEDED sonames, needed versions per library, and the undefined symbols of each version."""
    out = subprocess.run(
        ["readelf", "-W", "-d", "-V", "--dyn-syms", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    versions = {}  # version index -> (library, version name)
    library = None
    section = out.split("Version needs section", 1)
    if len(section) == 2:
        for line in section[1].splitlines():
            m = re.search(r"File: (\S+)", line)
            if m:
                library = m.group(1)
                continue
            m = re.search(r"Name: (\S+)\s+Flags: \S+\s+Version: (\d+)", line)
            if m and library:
                versions[m.group(2)] = (library, m.group(1))
            elif line.strip() and not line.startswith(" "):
                break
    symbols = {}  # (library, version) -> [symbol, ...]
    for m in re.finditer(r" UND (\S+)@(\S+) \((\d+)\)", out):
        key = versions.get(m.group(3), (None, m.group(2)))
        symbols.setdefault(key, []).append(m.group(1))
    return {"needed": needed, "versions": sorted(set(versions.values())), "symbols": symbols}


def version_tuple(text: str) -> tuple:
    return tuple(int(x) for x in text.split("."))


def audit_elves(root: Path, capabilities: set, max_glibc: tuple) -> list:
    """Findings for the ELF files under root (empty: all fine)."""
    elves = [p for p in sorted(root.rglob("*")) if is_elf(p)]
    own = {p.name for p in root.rglob("*.so*")}
    findings = []
    newest = (0,)
    for elf in elves:
        rel = "/" + str(elf.relative_to(root))
        needs = elf_needs(elf)
        for library, version in needs["versions"]:
            m = GLIBC.match(version)
            if m:
                newest = max(newest, version_tuple(m.group(1)))
            if m and version_tuple(m.group(1)) > max_glibc:
                syms = sorted(set(needs["symbols"].get((library, version), [])))
                findings.append(
                    f"{rel}: needs {version} from {library} for "
                    f"{', '.join(syms[:6]) or '(no symbol listed)'}"
                )
            elif library not in own and f"{library}({version})(64bit)" not in capabilities:
                findings.append(f"{rel}: needs {library}({version}), not in the EL7 base")
        for soname in needs["needed"]:
            if soname not in own and f"{soname}()(64bit)" not in capabilities:
                findings.append(f"{rel}: loads {soname}, which the EL7 base does not have")
    print(
        f"  info {len(elves)} ELF files; newest glibc version needed: "
        f"GLIBC_{'.'.join(map(str, newest))}"
    )
    return findings


def build_capability_rpm(name: str, capabilities: list, work: Path) -> Path:
    """An empty noarch package that provides exactly ``capabilities``."""
    top = work / f"rpmbuild-{name}"
    if top.exists():
        shutil.rmtree(top)
    (top / "SPECS").mkdir(parents=True)
    spec = top / "SPECS" / "model.spec"
    provides = "\n".join(f"Provides: {c}" for c in capabilities)
    spec.write_text(
        f"Name: dom0-model-{name.replace('+', '-')}\nVersion: 1\nRelease: 1\n"
        "Summary: capability model of a dom0 base (audit only)\nLicense: none\n"
        f"BuildArch: noarch\nAutoReqProv: no\n{provides}\n"
        "%description\nThe capabilities of a dom0 base, for rpm --test.\n%files\n"
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
            "_build_name_fmt model.rpm",
            str(spec),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise SystemExit(f"audit_rpm: cannot build the {name} model package:\n{proc.stderr}")
    return top / "model.rpm"


def rpm_test_install(rpm: Path, model_rpm: Path, dbroot: Path) -> list:
    """Failed-dependency lines of ``rpm -i --test --justdb`` into a db holding only the model."""
    if dbroot.exists():
        shutil.rmtree(dbroot)
    dbroot.mkdir(parents=True)
    for argv in (["--initdb"], ["-i", "--justdb", "--nodeps", str(model_rpm)]):
        proc = subprocess.run(
            ["rpm", "--root", str(dbroot), *argv], capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            raise SystemExit(f"audit_rpm: rpm {' '.join(argv)} failed: {proc.stderr.strip()}")
    proc = subprocess.run(
        ["rpm", "--root", str(dbroot), "-i", "--test", "--justdb", str(rpm)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = proc.stdout + proc.stderr
    failed = [line.strip() for line in text.splitlines() if " is needed by " in line]
    if proc.returncode != 0 and not failed:
        failed = [f"rpm -i --test failed without naming a dependency: {text.strip()[-400:]}"]
    return failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rpm", required=True)
    ap.add_argument("--provides", required=True, help="packaging/el7-provides.txt")
    ap.add_argument("--work", required=True, help="scratch directory")
    ap.add_argument("--max-glibc", default="2.17")
    args = ap.parse_args()
    rpm, work = Path(args.rpm).resolve(), Path(args.work).resolve()
    models = read_models(Path(args.provides))
    max_glibc = version_tuple(args.max_glibc)
    findings = []

    print(f"== audit {rpm.name} against the dom0 base ({args.provides})")
    root = work / "payload"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    unpack_newc(rpm, root)
    elf_findings = audit_elves(root, set(models["el7"]), max_glibc)
    for f in elf_findings:
        print(f"  FAIL {f}")
    if not elf_findings:
        print(f"  ok   every ELF file needs at most GLIBC_{args.max_glibc} and only EL7 libraries")
    findings += elf_findings

    for name, caps in models.items():
        model = build_capability_rpm(name, caps, work)
        failed = rpm_test_install(rpm, model, work / f"rpmdb-{name}")
        for line in failed:
            print(f"  FAIL rpm -i --test on {name}: {line}")
        if not failed:
            print(
                f"  ok   rpm -i --test --justdb: no failed dependency on the {name} model "
                f"({len(caps)} capabilities)"
            )
        findings += failed

    print(f"== audit: {len(findings)} finding(s)" if findings else "== audit: passed")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
