"""Stage /opt/iscsi-ha for the RPM: a private CPython plus a virtualenv holding the iscsi-ha wheel.

The dom0 of XCP-ng 8.x / XenServer 8 has an old CentOS 7 userland whose Python must not be touched,
so the package brings its own interpreter. This script builds that tree in a staging directory:

1. copy the interpreter that runs the build (``sys.base_prefix`` of ``--python``) to
   ``PREFIX/python``, without its test suite, tkinter, headers and site-packages;
2. make it relocatable: every shared library it loads from outside the system library
   directories (``libpython3.X.so`` of a ``--enable-shared`` build, the OpenSSL and SQLite that a
   manylinux image keeps under /opt/_internal and /usr/local) is copied into ``PREFIX/python/lib``
   and found through an ``$ORIGIN``-relative RUNPATH (patchelf);
3. create a virtualenv at ``PREFIX`` from that copy and pip-install the wheel and its dependencies
   (binary wheels only: nothing is compiled);
4. rewrite every path that still names the staging directory (venv symlinks, ``pyvenv.cfg``,
   script shebangs), byte-compile everything with ``unchecked-hash`` pycs (rpm may change mtimes;
   the files never change after installation), and refuse to finish while any file still
   contains the staging path.

Which interpreter is copied decides where the RPM runs: ``build.sh`` passes the one
``build_python.sh`` made for glibc 2.17 (zig cc, Debian's sources); ``audit_rpm.py`` then proves
the whole tree needs nothing newer. The dependencies come from wheels chosen for
``manylinux2014_x86_64`` (glibc 2.17) explicitly: ``pip download --platform ... --only-binary``,
then an offline install from that directory, so the build machine's glibc never decides which
wheel is taken. The result is reported in ``WORK/stage-info.json``.

Only the standard library is used: the script runs under the manylinux image's CPython and under
Debian's python3 alike.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

SYSTEM_LIB_DIRS = (
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
)
# Standard-library parts a daemon never imports; they are also what would pull Tk, X11 and
# gdbm into the RPM's automatic dependencies.
STDLIB_PRUNE_DIRS = {
    "test",
    "tests",
    "idle_test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
}
# The wheel platform of the dom0: CentOS 7's glibc 2.17 (PEP 599). pip expands it to every
# older manylinux tag as well.
WHEEL_PLATFORM = "manylinux2014_x86_64"
DYNLOAD_PRUNE = re.compile(r"^(_test|_ctypes_test|_xxtestfuzz|xxlimited|_tkinter|_gdbm|_dbm|nis)")


class StageError(RuntimeError):
    pass


def run(argv, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    kw.setdefault("timeout", 600)
    return subprocess.run([str(a) for a in argv], **kw)


def interpreter_facts(python: str) -> dict:
    code = (
        "import json, sys; print(json.dumps({'base_prefix': sys.base_prefix, "
        "'version': '%d.%d.%d' % sys.version_info[:3], 'xy': '%d.%d' % sys.version_info[:2]}))"
    )
    out = run([python, "-c", code], capture_output=True, text=True).stdout
    return json.loads(out)


def copy_interpreter(base: Path, dest: Path, xy: str) -> None:
    """Copy the interpreter prefix, keeping only what a running daemon can need."""
    stdlib = base / "lib" / f"python{xy}"

    def ignore(directory: str, names: list) -> set:
        d = Path(directory)
        skip = {n for n in names if n == "__pycache__"}
        if d == base:
            skip |= {n for n in names if n not in ("bin", "lib")}
        elif d == base / "bin":
            skip |= {n for n in names if n != f"python{xy}"}
        elif d == base / "lib":
            skip |= {n for n in names if n != f"python{xy}" and not n.startswith("libpython")}
            skip |= {n for n in names if n.endswith(".a")}
        elif d == stdlib:
            skip |= {n for n in names if n in STDLIB_PRUNE_DIRS or n.startswith("config-")}
            skip |= {n for n in names if n == "site-packages"}
        elif d == stdlib / "lib-dynload":
            skip |= {n for n in names if DYNLOAD_PRUNE.match(n)}
        elif stdlib in d.parents:
            skip |= {n for n in names if n in STDLIB_PRUNE_DIRS}
        return skip

    shutil.copytree(base, dest, symlinks=True, ignore=ignore)
    (dest / "lib" / f"python{xy}" / "site-packages").mkdir(exist_ok=True)
    for alias in ("python3", "python"):
        (dest / "bin" / alias).symlink_to(f"python{xy}")


def is_elf(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def ldd(path: Path) -> list:
    """(soname, resolved path or None) for each library the dynamic loader would load."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    proc = run(["ldd", path], capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0 and "not a dynamic executable" in (proc.stdout + proc.stderr):
        return []
    if proc.returncode != 0:
        raise StageError(f"cannot read `ldd {path}`: {proc.stderr.strip() or proc.stdout!r}")
    deps = []
    for line in proc.stdout.splitlines():
        m = re.match(r"\s*(\S+) => (not found|(\S+) \(0x[0-9a-f]+\))", line)
        if m:
            deps.append((m.group(1), None if m.group(2) == "not found" else m.group(3)))
    return deps


def in_system_dir(path: str) -> bool:
    return (
        os.path.dirname(os.path.realpath(path)) in SYSTEM_LIB_DIRS
        or os.path.dirname(path) in SYSTEM_LIB_DIRS
    )


def strip_debug(pytree: Path) -> None:
    """Drop debug sections from the interpreter's binaries (a --with-pydebug-free build of
    pyenv keeps ~15 MiB of them; manylinux builds are already stripped: a no-op there)."""
    if shutil.which("strip") is None:
        return
    for p in sorted(pytree.rglob("*")):
        if is_elf(p):
            run(["strip", "--strip-debug", p])


def make_relocatable(pytree: Path, base: Path) -> list:
    """Bundle non-system libraries into pytree/lib, point RUNPATHs there; return their sonames."""
    libdir = pytree / "lib"
    bundled = []
    queue = [p for p in sorted(pytree.rglob("*")) if is_elf(p)]
    needs_runpath = set()
    seen = set()
    while queue:
        elf = queue.pop(0)
        if elf in seen:
            continue
        seen.add(elf)
        for soname, resolved in ldd(elf):
            if resolved is None:
                raise StageError(f"{elf}: {soname} not found by the dynamic loader")
            real = os.path.realpath(resolved)
            own = real.startswith(str(base) + os.sep)
            if own and (pytree / os.path.relpath(real, base)).parent == libdir:
                needs_runpath.add(elf)  # the interpreter's own lib/ (libpython): copied already
            elif in_system_dir(resolved) and not own:
                continue
            else:
                target = libdir / soname
                if not target.exists():
                    shutil.copy2(real, target)
                    target.chmod(0o755)
                    bundled.append(soname)
                    queue.append(target)
                needs_runpath.add(elf)
    elves = sorted(seen)
    for elf in elves:
        current = (
            run(
                ["patchelf", "--print-rpath", elf], capture_output=True, text=True, check=False
            ).stdout.strip()
            if shutil.which("patchelf")
            else ""
        )
        wanted = ""
        if elf in needs_runpath or elf.parent == libdir:
            rel = os.path.relpath(libdir, elf.parent)
            wanted = "$ORIGIN" if rel == "." else f"$ORIGIN/{rel}"
        stale = any(p and not p.startswith("$ORIGIN") for p in current.split(":"))
        if current == wanted or (not wanted and not stale):
            continue
        if not shutil.which("patchelf"):
            raise StageError(f"{elf} needs its RUNPATH rewritten: install patchelf")
        if wanted:
            run(["patchelf", "--set-rpath", wanted, elf])
        else:
            run(["patchelf", "--remove-rpath", elf])
    # Proof: every library now resolves inside the tree or from the system directories.
    for elf in elves:
        for soname, resolved in ldd(elf):
            if resolved is None or not (
                in_system_dir(resolved) or os.path.realpath(resolved).startswith(str(pytree))
            ):
                raise StageError(f"{elf}: {soname} still resolves to {resolved}")
    return bundled


def make_stdlib_scripts_plain(stdlib: Path) -> None:
    """Clear the execute bits in the standard library: a few modules (cgi.py, ...) start with
    ``#! /usr/local/bin/python`` and rpm turns an executable file's shebang into a requirement
    nothing on a dom0 provides. Nobody runs them as programs from there."""
    for p in stdlib.rglob("*"):
        if p.is_file() and not p.is_symlink() and p.suffix != ".so" and p.stat().st_mode & 0o111:
            p.chmod(p.stat().st_mode & ~0o111)


def fix_venv_paths(venv: Path, stage: Path, prefix: str, xy: str, version: str) -> None:
    staged = str(stage) + prefix
    (venv / "pyvenv.cfg").write_text(
        f"home = {prefix}/python/bin\n"
        "include-system-site-packages = false\n"
        f"version = {version}\n"
        f"executable = {prefix}/python/bin/python{xy}\n"
    )
    bindir = venv / "bin"
    for entry in sorted(bindir.iterdir()):
        if entry.is_symlink():
            # venv links bin/python to the interpreter by absolute (staging) path; relative
            # keeps it right wherever the tree is unpacked.
            if os.readlink(entry).startswith(str(stage)):
                entry.unlink()
                entry.symlink_to(f"../python/bin/python{xy}")
        elif entry.is_file():
            data = entry.read_bytes()
            if staged.encode() in data:
                entry.write_bytes(data.replace(staged.encode(), prefix.encode()))


def find_leaks(stage: Path) -> list:
    needle = str(stage).encode()
    leaks = []
    for p in stage.rglob("*"):
        if p.is_symlink():
            if str(stage) in os.readlink(p):
                leaks.append(str(p))
        elif p.is_file() and needle in p.read_bytes():
            leaks.append(str(p))
    return leaks


def tree_size(root: Path) -> tuple:
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    return len(files), sum(p.stat().st_size for p in files)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", required=True, help="interpreter to bundle (its base prefix)")
    ap.add_argument("--pip-python", required=True, help="a python whose pip has --python (22.3+)")
    ap.add_argument("--wheel", required=True)
    ap.add_argument("--stage", required=True, help="staging root; PREFIX is created inside it")
    ap.add_argument("--prefix", default="/opt/iscsi-ha")
    ap.add_argument("--info", required=True, help="where to write stage-info.json")
    args = ap.parse_args()

    t0 = time.monotonic()
    stage = Path(args.stage).resolve()
    venv = stage / args.prefix.lstrip("/")
    pytree = venv / "python"
    facts = interpreter_facts(args.python)
    # Resolved: manylinux's /opt/python/cp3XX-cp3XX is a link to /opt/_internal/cpython-3.X.Y.
    base, xy = Path(os.path.realpath(facts["base_prefix"])), facts["xy"]
    if str(base) in ("/", "/usr", "/usr/local"):
        # A distribution's Python is spread over /usr with the system's own libraries.
        raise StageError(
            f"{args.python} lives in {base}: bundle a self-contained interpreter "
            "(the manylinux image's /opt/python/*, pyenv, ...) instead"
        )
    if stage.exists():
        shutil.rmtree(stage)
    venv.mkdir(parents=True)

    copy_interpreter(base, pytree, xy)
    strip_debug(pytree)
    bundled = make_relocatable(pytree, base)
    # Every shared library the interpreter finds inside the tree: the RPM must neither provide
    # nor require these from the system (the spec's __requires_exclude gets this list).
    private = sorted({p.name for p in (pytree / "lib").iterdir() if ".so" in p.name})
    staged_py = pytree / "bin" / f"python{xy}"
    run([staged_py, "-c", "import ssl, sqlite3, ctypes, zlib, bz2, lzma, hashlib"])

    make_stdlib_scripts_plain(pytree / "lib" / f"python{xy}")

    run([staged_py, "-m", "venv", "--without-pip", venv])
    wheels = Path(args.info).parent / "wheels"
    if wheels.exists():
        shutil.rmtree(wheels)
    cp = "cp" + xy.replace(".", "")
    run(
        [
            args.pip_python,
            "-I",
            "-m",
            "pip",
            "download",
            "-q",
            "--disable-pip-version-check",
            "--dest",
            wheels,
            "--only-binary=:all:",
            "--platform",
            WHEEL_PLATFORM,
            "--python-version",
            xy,
            "--implementation",
            "cp",
            "--abi",
            cp,
            "--abi",
            "abi3",
            "--abi",
            "none",
            args.wheel,
        ]
    )
    run(
        [
            args.pip_python,
            "-I",
            "-m",
            "pip",
            "--python",
            venv / "bin" / "python",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--no-compile",
            "--no-index",
            "--find-links",
            wheels,
            "--only-binary=:all:",
            args.wheel,
        ]
    )
    chosen = sorted(p.name for p in wheels.glob("*.whl"))
    fix_venv_paths(venv, stage, args.prefix, xy, facts["version"])

    # Byte-compile at build time: root-owned, never rewritten at run time, owned by the RPM.
    # -s strips the staging directory from the paths recorded in the pycs.
    # The base interpreter, which finds its prefix next to itself; the venv's pyvenv.cfg already
    # names the final /opt path, which does not exist on the build machine.
    run(
        [
            staged_py,
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            stage,
            pytree / "lib" / f"python{xy}",
            venv / "lib" / f"python{xy}" / "site-packages",
        ],
        stdout=subprocess.DEVNULL,
    )

    leaks = find_leaks(stage)
    if leaks:
        raise StageError("files still name the staging directory: " + ", ".join(leaks[:10]))
    nfiles, nbytes = tree_size(venv)
    info = {
        "prefix": args.prefix,
        "python_version": facts["version"],
        "python_source": str(base),
        "bundled_sonames": bundled,
        "wheels": chosen,
        "private_sonames": private,
        "files": nfiles,
        "bytes": nbytes,
        "seconds": round(time.monotonic() - t0, 1),
    }
    Path(args.info).write_text(json.dumps(info, indent=2) + "\n")
    print(
        f"staged {args.prefix}: Python {facts['version']} from {base}, {nfiles} files, "
        f"{nbytes / 2**20:.1f} MiB, bundled {bundled or 'no libraries'}, "
        f"{info['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (StageError, subprocess.CalledProcessError) as exc:
        print(f"stage_tree: {exc}", file=sys.stderr)
        sys.exit(1)
