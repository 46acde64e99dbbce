#!/usr/bin/env bash
# Installs what iscsi-ha's tests and demo lab need on a fresh Debian 12 machine (run as root):
# the Debian packages of the real components the tests drive, and a virtualenv with the project.
# Idempotent and quick on a second run.
#
#   scripts/setup-env.sh              Debian packages (root) + virtualenv: for `make test`/`demo`
#   scripts/setup-env.sh --venv-only  only the virtualenv (any user, any machine with Python 3.9+
#                                     and its venv module): for `make unit`
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_ONLY=0
case "${1:-}" in
  --venv-only) VENV_ONLY=1 ;;
  "") ;;
  *) echo "usage: $0 [--venv-only]" >&2; exit 2 ;;
esac

APT_PACKAGES=(
  python3-venv python3-dev      # the project's virtualenv
  iproute2 iputils-arping iputils-ping   # VIP and ARP; iputils' arping (NOT the 'arping' package)
  tgt libiscsi-bin              # the real iSCSI target daemon and a userspace iSCSI client
  iptables                      # the storage-probe paging test makes the target unreachable (namespace lab)
  prometheus prometheus-alertmanager   # promtool, amtool, and the live alert checks
  drbd-utils                    # real drbdadm/drbdsetup formats (no kernel module here)
  rpm patchelf                  # rpmbuild for the dom0 package check; patchelf relinks the
                                # bundled interpreter's libpython
  dpkg-dev patch tcl binutils   # make rpm: apt-get source + dpkg-source, Debian's CPython fixes,
                                # SQLite's amalgamation (tclsh), readelf for the glibc audit
  createrepo-c                  # make repo: yum metadata for dist/
  openssl                       # certificates for the exporter's TLS tests
  libfaketime                   # lab/chaos.py's clock jumps: the controller's wall clock moves,
                                # the machine's does not
  qemu-system-x86 busybox-static cpio kmod   # the VM lab: real DRBD 8.4 in two QEMU VMs
  keepalived resource-agents    # rival methods in bench/bench_switch.py (run by hand, never
                                # as services: policy-rc.d below keeps them from starting)
  open-iscsi                    # XenServer's initiator (iscsid, iscsiadm), run inside the VM
                                # lab only; the host's kernel has no iSCSI initiator
  lvm2                          # the split-brain scenario's LVM snapshot of the victim, inside
                                # the VM lab only (the host has no device mapper)
)
VENV=${VENV:-.venv}

missing=()
[ "$VENV_ONLY" = 1 ] || for pkg in "${APT_PACKAGES[@]}"; do
  case "$pkg" in \#*) continue ;; esac
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  # Keep the packages' own services (tgtd, prometheus, alertmanager) from starting: the tests
  # start their own instances on private ports and stop them by PID.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$created_policy" = 1 ] && rm -f "$policy"
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat setup.py | sha1sum | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  echo "== installing iscsi-ha and its test dependencies into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e ".[test]"
  touch "$stamp"
fi
