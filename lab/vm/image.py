"""The VM's kernel and initramfs, built from Debian packages and cached.

The machine's own kernel has no DRBD and no loadable modules, so the VMs boot the kernel that
Debian's ``linux-image-amd64`` depends on: ``apt-get download`` fetches the package (~70 MB, once),
``dpkg -x`` unpacks it, ``depmod -b`` writes its ``modules.dep``. The initramfs is busybox plus the
few modules the lab needs (``MODULES`` and what ``modules.dep`` says they need, inserted in that
order by ``/init``) plus drbd-utils; everything else the VM runs (Python, the project's venv,
drbd-utils, tgt) comes from the host's root file system, shared read-only over 9p (see
``INIT``). Building takes about a second; the result is cached next to the package, keyed by the
kernel version and a hash of what went into it, so a second run reuses it.

Cache directory: ``$ISCSI_HA_VM_CACHE`` or ``<repo>/.cache/vm``. Nothing here downloads anything
but the one kernel package, through apt's own client.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_CACHE = REPO / ".cache" / "vm"
KERNEL_META = "linux-image-amd64"
BUSYBOX = "/bin/busybox"
# Order matters only for readability: /init inserts them with their dependencies first.
MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "crc32c_generic",
    "libcrc32c",
    "lru_cache",
    "drbd",
    "ext4",
    "9p",
    "9pnet",
    "9pnet_virtio",
    "overlay",
    "virtio_rng",  # entropy at once: Python blocks in getrandom() until the pool is ready
    "dm_mod",
    "dm_snapshot",  # LVM (the split-brain scenario's snapshot of the victim)
    "iscsi_tcp",
    "sd_mod",  # open-iscsi's kernel half, for XenServer's initiator (initiator.py)
    # The kernel target (LIO) for the lio backend, with configfs mounted at /sys/kernel/config.
    # Loaded at boot: modprobe inside the VM would look in the host's /lib/modules.
    "configfs",
    "target_core_mod",
    "target_core_iblock",
    "iscsi_target_mod",
    # ss: listing sockets over netlink and ending them (SOCK_DESTROY), what the controller does
    # to its own VIP-sourced iSCSI connections after a move (controller/systems/vip_sessions.py).
    "inet_diag",
    "tcp_diag",
)
DRBD_UTILS = (
    "/usr/sbin/drbdadm",
    "/usr/sbin/drbdsetup",
    "/usr/sbin/drbdmeta",
    "/lib/drbd/drbdadm-84",
    "/lib/drbd/drbdsetup-84",
)
# Host tools a lab VM needs (they run from the shared root): checked up front, named when missing.
HOST_TOOLS = ("qemu-system-x86_64", "apt-get", "dpkg", "depmod", "cpio", "ip", "tgtd", "drbdadm")


class ImageError(Exception):
    """The kernel or initramfs cannot be made (no network, a tool missing): says what to do."""


@dataclass(frozen=True)
class Image:
    kernel: Path  # vmlinuz
    initrd: Path  # initramfs.cpio.gz
    version: str  # e.g. 6.1.0-56-amd64


def cache_dir() -> Path:
    return Path(os.environ.get("ISCSI_HA_VM_CACHE") or DEFAULT_CACHE)


def missing_host_tools() -> List[str]:
    missing = [t for t in HOST_TOOLS if not shutil.which(t)]
    if not os.path.isfile(BUSYBOX):
        missing.append(BUSYBOX + " (busybox-static)")
    return missing


def _run(argv: Sequence[str], cwd: Path, timeout: float = 300) -> str:
    res = subprocess.run(list(argv), cwd=str(cwd), capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise ImageError(
            f"`{' '.join(argv)}` failed (rc {res.returncode}): "
            f"{(res.stderr or res.stdout).strip()[-600:]!r}"
        )
    return res.stdout


def kernel_package_name(cwd: Path) -> str:
    """The versioned package linux-image-amd64 depends on (linux-image-6.1.0-NN-amd64)."""
    out = _run(["apt-cache", "depends", KERNEL_META], cwd)
    for line in out.splitlines():
        word = line.strip()
        if word.startswith("Depends:") and "linux-image-" in word:
            return word.split(":", 1)[1].strip()
    raise ImageError(f"cannot read `apt-cache depends {KERNEL_META}`: {out.strip()[:300]!r}")


def fetch_kernel(cache: Path) -> Path:
    """The unpacked kernel package (cached); downloads it with apt-get the first time."""
    cache.mkdir(parents=True, exist_ok=True)
    package = kernel_package_name(cache)
    tree = cache / package
    if (tree / ".complete").exists():
        return tree
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        try:
            _run(["apt-get", "download", package], cache, timeout=600)
        except ImageError as exc:
            raise ImageError(
                f"cannot download the kernel package {package} (no network or no apt "
                f"sources?). Fetch it once with `cd {cache} && apt-get download {package}`. "
                f"Details: {exc}"
            ) from None
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if not debs:
            raise ImageError(f"apt-get download {package} left no .deb in {cache}")
    if tree.exists():
        shutil.rmtree(tree)
    partial = cache / (package + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    _run(["dpkg", "-x", str(debs[-1]), str(partial)], cache)
    version = _only_dir(partial / "lib" / "modules").name
    _run(["depmod", "-b", str(partial), version], cache)
    partial.rename(tree)
    (tree / ".complete").touch()
    return tree


def _only_dir(path: Path) -> Path:
    dirs = [p for p in path.iterdir() if p.is_dir()]
    if len(dirs) != 1:
        raise ImageError(f"expected one kernel version under {path}, found {dirs}")
    return dirs[0]


def module_order(modules_dep: str, wanted: Sequence[str]) -> List[str]:
    """Relative module paths, each after its dependencies (from ``modules.dep``)."""
    deps: Dict[str, List[str]] = {}
    by_name: Dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[mod] = rest.split()
        name = os.path.basename(mod).split(".ko")[0].replace("-", "_")
        by_name[name] = mod
    order: List[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in deps.get(mod, []):
            visit(dep)
        order.append(mod)

    for name in wanted:
        if name not in by_name:
            raise ImageError(f"module {name} is not in modules.dep (built in? renamed?)")
        visit(by_name[name])
    return order


def _libraries(binaries: Sequence[str]) -> List[str]:
    libs = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            parts = line.split()
            for part in parts:
                if part.startswith("/"):
                    libs.add(part)
    return sorted(libs)


INIT = r"""#!/bin/sh
# PID 1 of a lab VM (busybox). Loads the modules, mounts the host's root read-only as /newroot
# with tmpfs where programs write, then hands over to busybox init, which reaps orphans and
# respawns the agent (run chrooted into /newroot).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod /$m || echo "lab-init: insmod $m failed"; done
arg() { sed -n "s/.*lab\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
hostname "$(arg node)"
mkdir -p /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /newroot || {
  echo "lab-init: cannot mount the host root"; exec sh; }
# Paths under tmpfs'd directories that must stay visible (e.g. a venv in /tmp): bind them aside.
keep="$(arg keep | tr ',' ' ')"
i=0
for p in $keep; do mkdir -p /keep/$i; mount --bind /newroot$p /keep/$i; i=$((i+1)); done
for d in /tmp /run /var/lib/drbd; do mount -t tmpfs -o mode=0755 tmpfs /newroot$d; done
chmod 1777 /newroot/tmp
mkdir -p /newroot/run/lock /newroot/run/lab /newroot/run/tgtd
i=0
for p in $keep; do mkdir -p /newroot$p; mount --move /keep/$i /newroot$p; i=$((i+1)); done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 exchange /newroot/run/lab || {
  echo "lab-init: cannot mount the exchange share"; exec sh; }
mount -t tmpfs tmpfs /newroot/etc/drbd.d
cp /newroot/run/lab/drbd.d/* /newroot/etc/drbd.d/ 2>/dev/null
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t configfs configfs /newroot/sys/kernel/config || echo "lab-init: no configfs"
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
ip link set lo up
n=0
for ifc in $(ls /sys/class/net | grep -v '^lo$' | sort); do
  addr="$(arg ip$n)"
  [ -n "$addr" ] && ip addr add "$addr" dev "$ifc"
  ip link set "$ifc" up
  n=$((n+1))
done
echo 7 > /proc/sys/kernel/printk
port=""
for p in /sys/class/virtio-ports/*; do
  [ "$(cat $p/name 2>/dev/null)" = agent ] && port=/dev/$(basename $p)
done
python="$(arg python)"
cat > /etc/inittab <<EOF
::respawn:/bin/chroot /newroot $python -S /run/lab/agent.py $port
::shutdown:/bin/sync
EOF
echo "lab-init: ready at $(cut -d' ' -f1 /proc/uptime) s, agent on $port"
exec /bin/init
"""


def build_initramfs(tree: Path, out: Path) -> None:
    version = _only_dir(tree / "lib" / "modules").name
    moddir = tree / "lib" / "modules" / version
    order = module_order((moddir / "modules.dep").read_text(), MODULES)
    root = out.parent / (out.name + ".root")
    if root.exists():
        shutil.rmtree(root)
    for d in (
        "bin",
        "dev",
        "proc",
        "sys",
        "etc",
        "newroot",
        "lib/drbd",
        "usr/sbin",
        "var/lock",
        "lib64",
        "lib/x86_64-linux-gnu",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")  # the interpreter of /init
    for rel in order:
        dest = root / "lib" / "modules" / version / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(moddir / rel, dest)
    (root / "modules.order").write_text(
        "\n".join(f"lib/modules/{version}/{rel}" for rel in order) + "\n"
    )
    # drbd-utils inside the image too, so DRBD can be driven before (or without) the shared root.
    for binary in list(DRBD_UTILS) + _libraries(DRBD_UTILS):
        dest = root / binary.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(binary), dest)
    init = root / "init"
    init.write_text(INIT)
    init.chmod(0o755)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    cpio = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        cwd=str(root),
        input="\n".join(files).encode(),
        capture_output=True,
        timeout=60,
    )
    if cpio.returncode != 0:
        raise ImageError(f"cpio failed: {cpio.stderr.decode(errors='replace')[-300:]!r}")
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(cpio.stdout, compresslevel=1))
    tmp.rename(out)
    shutil.rmtree(root)


def prepare(cache: Path = None) -> Image:
    """The kernel and an up-to-date initramfs, from the cache or built now."""
    missing = missing_host_tools()
    if missing:
        raise ImageError(
            "missing on this machine: "
            + ", ".join(missing)
            + " (apt-get install qemu-system-x86 busybox-static cpio kmod)"
        )
    cache = cache or cache_dir()
    tree = fetch_kernel(cache)
    version = _only_dir(tree / "lib" / "modules").name
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())  # INIT and the build code itself
    digest.update(" ".join(MODULES).encode())
    for binary in DRBD_UTILS + (BUSYBOX,):
        st = os.stat(binary)
        digest.update(f"{binary}:{st.st_size}:{int(st.st_mtime)}".encode())
    initrd = cache / f"initramfs-{version}-{digest.hexdigest()[:12]}.cpio.gz"
    if not initrd.exists():
        build_initramfs(tree, initrd)
    return Image(kernel=tree / "boot" / f"vmlinuz-{version}", initrd=initrd, version=version)
