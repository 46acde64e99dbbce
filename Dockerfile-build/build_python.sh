#!/usr/bin/env bash
# Builds the CPython the dom0 RPM bundles: CPython 3.11 for glibc 2.17 (CentOS 7, the userland of
# XCP-ng 8.x / XenServer 8), made on any Debian 12 machine, no container needed.
#
#   Dockerfile-build/build_python.sh          prints the interpreter's prefix (last line of stdout)
#
# * Sources: Debian bookworm's source packages pinned in python-sources.txt, fetched with
#   `apt-get source --download-only` through a private sources list (deb-src lines only; the
#   machine's own apt configuration is neither read for sources nor changed).
# * CPython gets the upstream fixes Debian carries (its series from FIRST_UPSTREAM_PATCH on: the
#   CVE fixes and crash fixes), not Debian's layout patches (dist-packages, multiarch, ...), which
#   describe a /usr system Python, not a private /opt one.
# * Compiler: `zig cc -target x86_64-linux-gnu.2.17` from the ziglang wheel. Zig links against
#   glibc 2.17's symbol versions, and it never searches this machine's /usr/include or /usr/lib,
#   so nothing of the build machine leaks in: OpenSSL, libffi, zlib, bzip2, xz and SQLite are
#   built with the same compiler as static PIC archives and linked into the extension modules;
#   Debian's patched expat sources replace the copy inside CPython's tree.
#   What the result needs from the host is glibc's libraries only.
# * Only what the interpreter links is built: each library's static archive and headers (no
#   tools, tests, docs or shared objects); OpenSSL without the legacy provider, engines and the
#   algorithms and protocols that neither `ssl` nor `hashlib` use; CPython without PGO/LTO, its
#   test modules, and the three byte-compilations of `make install` (stage_tree.py compiles what
#   it ships).
# * Two lanes on the build's cores: OpenSSL (the longest, `make -j`) beside zlib, bzip2, xz,
#   libffi and SQLite one after the other (mostly serial configure scripts and SQLite's single
#   amalgamation), then CPython.
# * Cache, in ${ISCSI_HA_BUILD_CACHE:-<repo>/.cache/build}, one entry per piece:
#     lib-NAME-KEY     a library's prefix; KEY = its pinned version, its build function's text and
#                      the toolchain (zig version, target, flags, wrappers)
#     python-KEY       the interpreter; KEY = the pins of python3.11 and expat, the CPython build
#                      and check functions, the toolchain and the keys of the libraries it links
#   so changing one library's flags rebuilds that library and CPython, nothing else. A hit on
#   python-KEY prints the path at once. Every piece is built in CACHE/tmp-* and renamed into place
#   only when complete; SIGINT/SIGTERM/SIGHUP stop the whole build (every process it started)
#   and remove its tmp-* directory; stale tmp-* directories (a SIGKILL, a power cut) are removed
#   by the next build, which holds the cache's lock. Downloaded sources stay in CACHE/src (moved
#   there whole after apt checked their hashes); logs in CACHE/logs.
#
# Environment: ISCSI_HA_BUILD_CACHE, JOBS (default: number of CPUs), BUILD_NICE (the niceness the
# build runs at, default 19), PYTHON_SOURCES (another pin list, for tests), DEBIAN_MIRROR (default
# http://deb.debian.org/debian).
set -euo pipefail
# The whole script is one function, read in full before it runs: editing this file during a build
# cannot make the running build execute half-old lines.
main() {

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
PINS=${PYTHON_SOURCES:-$HERE/python-sources.txt}
CACHE=${ISCSI_HA_BUILD_CACHE:-$REPO/.cache/build}
JOBS=${JOBS:-$(nproc)}
NICENESS=${BUILD_NICE:-19}
PREFIX=/opt/iscsi-ha/python
TARGET=x86_64-linux-gnu.2.17
CFLAGS_ALL="-O2 -g0 -fPIC"
SUITES="bookworm bookworm-updates"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Debian's python3.11 series: entries before this one adapt CPython to Debian's /usr layout.
FIRST_UPSTREAM_PATCH=shutdown-deadlock.diff
LIBS_A=(openssl)                                # lane A
LIBS_B=(zlib bzip2 xz-utils libffi sqlite3)    # lane B, in this order

die() { printf 'build_python: %s\n' "$*" >&2; exit 1; }
say() { printf '== %s\n' "$*" >&2; }

pin() {  # pin NAME -> the pinned version of source package NAME
  local v; v=$(sed -n "s/^$1=//p" "$PINS")
  [ -n "$v" ] || die "$PINS: no version pinned for $1"
  echo "$v"
}
ZIGVER=$(sed -n 's/^ziglang==//p' "$PINS")
[ -n "$ZIGVER" ] || die "$PINS: no ziglang==VERSION line"

# ------------------------------------------------------------------------------ the compiler
# Wrappers in $1/bin for zig's cc/ar/ranlib. Its text is part of every cache key.
# -fno-sanitize=all: zig cc turns UBSan traps on in unoptimised compiles (configure's probes).
# -Wno-error=date-time: zig makes __DATE__/__TIME__ an error; CPython's build info uses them.
# dpkg-architecture: CPython's setup.py asks it for Debian's multiarch directory and would add
# /usr/include/x86_64-linux-gnu (this machine's glibc 2.36 headers) to every module: not here.
toolchain() {
  local w=$1/bin
  mkdir -p "$w"
  printf '#!/bin/sh\nexec %q cc -target %s -fno-sanitize=all -Wno-error=date-time "$@"\n' \
    "$ZIG" "$TARGET" >"$w/cc"
  printf '#!/bin/sh\nexec %q ar "$@"\n' "$ZIG" >"$w/ar"
  printf '#!/bin/sh\nexec %q ranlib "$@"\n' "$ZIG" >"$w/ranlib"
  printf '#!/bin/sh\nexit 1\n' >"$w/dpkg-architecture"
  chmod +x "$w"/*
  export CC=$w/cc AR=$w/ar RANLIB=$w/ranlib CFLAGS=$CFLAGS_ALL PATH=$w:$PATH
  unset CPPFLAGS LDFLAGS LIBS PKG_CONFIG_PATH
}

# -------------------------------------------------------------------- static C libraries
# Each gets its source tree in $SRC and installs headers and archive(s) into $DEST.
build_zlib() {
  ./configure --static --prefix="$DEST" && make -j"$JOBS" libz.a && make install
}
build_bzip2() {
  make -j"$JOBS" CC="$CC" AR="$AR" RANLIB="$RANLIB" CFLAGS="$CFLAGS -D_FILE_OFFSET_BITS=64" libbz2.a
  mkdir -p "$DEST/lib" "$DEST/include"
  cp libbz2.a "$DEST/lib/" && cp bzlib.h "$DEST/include/"
}
build_xz_utils() {
  ./configure --prefix="$DEST" --disable-shared --enable-static --with-pic --disable-xz \
    --disable-xzdec --disable-lzmadec --disable-lzmainfo --disable-lzma-links --disable-scripts \
    --disable-doc --disable-nls --disable-dependency-tracking
  make -j"$JOBS" -C src/liblzma && make -C src/liblzma install
}
build_libffi() {
  # Static trampolines (3.4's default) do not compile here (tramp.c calls open_temp_exec_file,
  # which closures.c hides in this configuration); ctypes works with the classic closures.
  ./configure --prefix="$DEST" --disable-shared --enable-static --with-pic --disable-docs \
    --disable-multi-os-directory --disable-exec-static-tramp --disable-dependency-tracking
  make -j"$JOBS" && make install
}
build_sqlite3() {
  # The source tree generates its amalgamation with tclsh (Debian: tcl); the library is that
  # one file, compiled once.
  ./configure --prefix="$DEST" --disable-shared --enable-static --with-pic --disable-tcl \
    --disable-readline --disable-editline --disable-load-extension
  make -j"$JOBS" libsqlite3.la
  mkdir -p "$DEST/lib" "$DEST/include"
  cp .libs/libsqlite3.a "$DEST/lib/" && cp sqlite3.h sqlite3ext.h "$DEST/include/"
}
build_openssl() {
  # What `ssl` and `hashlib` need: TLS 1.2/1.3 with the default provider's algorithms (AES,
  # ChaCha20-Poly1305, SHA-1/2/3, BLAKE2, scrypt, PBKDF2, RSA, EC, DH, DSA, 3DES for old PEM
  # keys). Left out: the legacy provider (MD4, RC4, Blowfish...), engines, SSLv3 and DTLS, SRP,
  # compression, CMS/TS/CMP/OCSP/CT, and ciphers no TLS peer of a dom0 needs. The dom0's
  # certificate store (/etc/pki/tls/cert.pem -> the CA bundle) is OpenSSL's default there.
  ./Configure linux-x86_64 no-shared no-module no-dso no-tests no-legacy no-engine no-comp \
    no-srp no-ssl3 no-dtls no-sctp no-srtp no-cms no-ts no-cmp no-ocsp no-ct no-gost no-idea \
    no-seed no-aria no-bf no-cast no-camellia no-rc2 no-rc4 no-rc5 no-md4 no-mdc2 no-whirlpool \
    no-sm2 no-sm3 no-sm4 no-siphash no-rfc3779 no-ec2m no-ocb no-siv \
    --prefix="$DEST" --libdir=lib --openssldir=/etc/pki/tls -fPIC
  make -j"$JOBS" build_libs && make install_dev
}

# -------------------------------------------------------------------------------- CPython
build_cpython() {
  local series=debian/patches/series p started=0
  grep -qx "$FIRST_UPSTREAM_PATCH" "$series" \
    || die "$series (python3.11 $(pin python3.11)) has no $FIRST_UPSTREAM_PATCH: review the series"
  for p in $(grep -v '^#' "$series"); do
    [ "$p" = "$FIRST_UPSTREAM_PATCH" ] && started=1
    [ "$started" = 1 ] || continue
    patch -p1 -s --no-backup-if-mismatch <"debian/patches/$p" \
      || die "Debian patch $p does not apply to python3.11 $(pin python3.11)"
    echo "applied debian/patches/$p"
  done
  # expat: CPython 3.11.2 carries expat 2.5.0 as released; Debian's expat 2.5.0 source package
  # adds its CVE fixes (pyexpat parses every XML-RPC answer XenAPI gets). Its library sources
  # replace the copy in Modules/expat, keeping CPython's own expat_config.h and the symbol
  # prefixes of pyexpatns.h (so the interpreter's expat never mixes with a system libexpat).
  unpack expat "$T/expat"
  local f ex=$T/expat/expat/lib
  for f in "$ex"/*.c "$ex"/*.h; do
    [ "$(basename "$f")" = expat_external.h ] || cp "$f" Modules/expat/
  done
  awk '/^#ifndef XMLCALL/ && !done { print "#include \"pyexpatns.h\""
         print "#define XML_SetReparseDeferralEnabled PyExpat_XML_SetReparseDeferralEnabled"
         done = 1 } { print }' "$ex/expat_external.h" >Modules/expat/expat_external.h
  grep -q '^#include "pyexpatns.h"' Modules/expat/expat_external.h \
    || die "expat $(pin expat): expat_external.h changed shape; cannot add pyexpatns.h"
  # Debian's fix for CVE-2026-4224 makes pyexpat.c include an internal header; Debian builds the
  # module with Py_BUILD_CORE_MODULE (its Setup patch, left out here), as other 3.11 modules
  # define it themselves.
  sed -i '1i #ifndef Py_BUILD_CORE_BUILTIN\n#  define Py_BUILD_CORE_MODULE 1\n#endif' Modules/pyexpat.c
  local inc="-I$DEPS/include" lib="-L$DEPS/lib"
  # pkg-config would answer with this machine's libraries (libuuid, libnsl2 with libtirpc), and
  # the static libraries' .pc files name the directory they were built in: it sees nothing, the
  # flags below say it all. What it would have found (_uuid, nis) is left out; uuid.py and the
  # rest of the stdlib work without them. No --enable-optimizations (PGO runs the test suite)
  # and no LTO: minutes of build for a daemon that sleeps between cycles.
  mkdir -p "$T/no-pkgconfig"
  PKG_CONFIG_LIBDIR=$T/no-pkgconfig PKG_CONFIG_PATH= ./configure --prefix="$PREFIX" \
    --disable-shared --without-ensurepip --disable-test-modules \
    --with-openssl="$DEPS" --with-openssl-rpath=no \
    LIBS="-lpthread -ldl" CPPFLAGS="$inc" LDFLAGS="$lib" \
    LIBFFI_CFLAGS="$inc" LIBFFI_LIBS="$lib -lffi" \
    ZLIB_CFLAGS="$inc" ZLIB_LIBS="$lib -lz" \
    BZIP2_CFLAGS="$inc" BZIP2_LIBS="$lib -lbz2" \
    LIBLZMA_CFLAGS="$inc" LIBLZMA_LIBS="$lib -llzma" \
    LIBSQLITE3_CFLAGS="$inc" LIBSQLITE3_LIBS="$lib -lsqlite3 -lm" \
    OPT="-DNDEBUG -fwrapv -O2"
  # `make install` byte-compiles the whole stdlib three times (-O0, -O1, -O2); stage_tree.py
  # drops every __pycache__ and compiles what it ships, so those runs only cost time.
  grep -q 'compileall.py' Makefile || die "CPython's Makefile has no compileall step to skip"
  sed -i 's|\$(DESTDIR)\$(LIBDEST)/compileall\.py|-c pass|' Makefile
  make -j"$JOBS"
  make install DESTDIR="$T/result"
}

# The modules a daemon with TLS, ctypes (XenAPI over https needs ssl) and compressed logs uses
# must have been built, not silently skipped.
check_python() {
  "$1" -c 'import ssl, _ssl, hashlib, ctypes, zlib, bz2, lzma, sqlite3, json, decimal, _socket
import pyexpat, xml.etree.ElementTree, xmlrpc.client
for name in ("sha256", "sha3_256", "blake2b", "md5"):
    hashlib.new(name, b"x").hexdigest()
hashlib.scrypt(b"x", salt=b"s", n=2, r=8, p=1)
ctx = ssl.create_default_context()
assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2, ctx.minimum_version
assert any(c["name"].startswith("TLS_AES_") for c in ctx.get_ciphers()), "no TLS 1.3 ciphers"
print("bundled:", ssl.OPENSSL_VERSION, "sqlite", sqlite3.sqlite_version, pyexpat.EXPAT_VERSION)'
}

# ------------------------------------------------------------------------------ cache keys
sha() { sha256sum | cut -c1-16; }
TOOLKEY=$(printf '%s\n' "$ZIGVER" "$TARGET" "$CFLAGS_ALL" "$(declare -f toolchain)" | sha)
fn_of() { echo "build_${1//-/_}"; }                 # xz-utils -> build_xz_utils
lib_key() {
  printf '%s\n' "$1=$(pin "$1")" "$TOOLKEY" "$(declare -f "$(fn_of "$1")")" | sha
}
declare -A LIBKEY
for p in "${LIBS_A[@]}" "${LIBS_B[@]}"; do LIBKEY[$p]=$(lib_key "$p"); done
PYKEY=$(printf '%s\n' "python3.11=$(pin python3.11)" "expat=$(pin expat)" "$TOOLKEY" \
  "$FIRST_UPSTREAM_PATCH" "$PREFIX" "$(declare -f build_cpython check_python)" \
  "$(for p in "${!LIBKEY[@]}"; do echo "$p ${LIBKEY[$p]}"; done | sort)" | sha)
RESULT=$CACHE/python-$PYKEY
done_python() { [ -x "$RESULT$PREFIX/bin/python3.11" ]; }
lib_dir() { echo "$CACHE/lib-$1-${LIBKEY[$1]}"; }
done_lib() { [ -f "$(lib_dir "$1")/.complete" ]; }

if done_python; then
  say "bundled Python: cached ($RESULT)"
  echo "$RESULT$PREFIX"
  exit 0
fi

mkdir -p "$CACHE/src" "$CACHE/logs"
# One build at a time per cache (two test runs, make rpm beside CI): the second waits, then
# finds the first one's result.
exec 9>"$CACHE/.lock"
flock 9
if done_python; then
  say "bundled Python: built meanwhile ($RESULT)"
  echo "$RESULT$PREFIX"
  exit 0
fi
# Holding the lock, no other build is using this cache: any tmp-* is left by a killed one.
for stale in "$CACHE"/tmp-*; do
  [ -e "$stale" ] || continue
  say "removing $stale (left by an interrupted build)"
  rm -rf "$stale"
done
T=$(mktemp -d "$CACHE/tmp-build.XXXXXX")
# Minutes of compiling on a machine that may run other work (CI's VM tests, a desk): every
# process of the build yields to them. A dedicated builder loses nothing.
renice -n "$NICENESS" -p $$ >/dev/null 2>&1 || true

# ------------------------------------------------------------------- stopping, cleaning up
descendants() {  # every process below PID $1, parents first (read from /proc: no procps needed)
  local -A kids=()
  local f line rest pid ppid
  for f in /proc/[0-9]*/stat; do
    { read -r line <"$f"; } 2>/dev/null || continue   # gone meanwhile
    rest=${line##*) }          # the command name may hold spaces and parentheses
    ppid=${rest#* }; ppid=${ppid%% *}
    pid=${f#/proc/}; pid=${pid%/stat}
    kids[$ppid]+=" $pid"
  done
  local queue=($1) out=()
  while [ ${#queue[@]} -gt 0 ]; do
    pid=${queue[0]}; queue=("${queue[@]:1}")
    for f in ${kids[$pid]:-}; do
      [ "$f" = "$BASHPID" ] || { out+=("$f"); queue+=("$f"); }  # not the $(...) asking
    done
  done
  echo "${out[@]:-}"
}
stop_children() {  # TERM everything this script started, then KILL what is left; bounded
  local i pids
  for i in $(seq 1 50); do
    pids=$(descendants $$)
    [ -n "$pids" ] || return 0
    if [ "$i" -le 30 ]; then kill -TERM $pids 2>/dev/null || true
    else kill -KILL $pids 2>/dev/null || true; fi
    sleep 0.1
  done
}
cleanup() {
  stop_children
  rm -rf "$T"
}
on_signal() {
  trap - INT TERM HUP
  say "$1: stopping the build, removing $T"
  cleanup
  trap - EXIT
  case $1 in INT) exit 130 ;; HUP) exit 129 ;; *) exit 143 ;; esac
}
trap cleanup EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP

# --------------------------------------------------------------------------------- sources
APT_OPTS=(
  -o "Dir::Etc::sourcelist=$CACHE/apt/sources.list" -o "Dir::Etc::sourceparts=$CACHE/apt/none"
  -o "Dir::State::Lists=$CACHE/apt/lists" -o "Dir::Cache=$CACHE/apt" -o "Dir::Cache::pkgcache="
  -o "Dir::Cache::srcpkgcache=" -o "APT::Sandbox::User=root" -o "Acquire::Retries=2"
)
FETCH_LOG=$CACHE/logs/sources.log
: >"$FETCH_LOG"
apt_updated=0
dsc_of() {  # dsc_of NAME VERSION -> path of the .dsc in CACHE/src
  echo "$CACHE/src/${1}_${2#*:}.dsc"
}
dsc_files() { awk '/^Files:/{on=1; next} /^[^ ]/{on=0} on{print $3}' "$1"; }
have_source() {  # the .dsc and every file it lists are in CACHE/src
  local dsc; dsc=$(dsc_of "$1" "$2")
  [ -f "$dsc" ] || return 1
  local f
  for f in $(dsc_files "$dsc"); do
    [ -f "$CACHE/src/$f" ] || return 1
  done
}
fetch() {  # fetch NAME: the pinned source package into CACHE/src
  local name=$1 version; version=$(pin "$name")
  have_source "$name" "$version" && return 0
  if [ "$apt_updated" = 0 ]; then
    mkdir -p "$CACHE/apt/none" "$CACHE/apt/lists/partial" "$CACHE/apt/archives/partial"
    for s in $SUITES; do echo "deb-src $MIRROR $s main"; done >"$CACHE/apt/sources.list"
    say "apt-get update (deb-src of $SUITES only, private lists in $CACHE/apt)"
    run_bg apt-get "${APT_OPTS[@]}" update >>"$FETCH_LOG" 2>&1 \
      || die "cannot read the source lists of $MIRROR ($SUITES): apt-get update failed (log: $FETCH_LOG)"
    apt_updated=1
  fi
  say "source package $name $version"
  # Downloaded beside the cache and moved in whole: an interrupted download leaves nothing in
  # CACHE/src that could pass for a complete source package.
  local dl=$T/dl-$name
  mkdir -p "$dl"
  run_bg in_dir "$dl" apt-get "${APT_OPTS[@]}" source --download-only "$name=$version" \
    >>"$FETCH_LOG" 2>&1 || die "cannot fetch the source package $name $version from $MIRROR" \
      "($SUITES): $(grep -E '^E:' "$FETCH_LOG" | tail -n 2 | tr '\n' ' ')(log: $FETCH_LOG)"
  local dsc; dsc=$(basename "$(dsc_of "$name" "$version")")
  [ -f "$dl/$dsc" ] || die "source package $name $version: no $dsc after the download"
  local f
  for f in $(dsc_files "$dl/$dsc") "$dsc"; do
    [ -f "$dl/$f" ] || die "source package $name $version: $f missing after the download"
    mv -f "$dl/$f" "$CACHE/src/$f"
  done
  rm -rf "$dl"
}
unpack() {  # unpack NAME DIR [--skip-patches]: Debian source, with Debian's patches applied
  local name=$1 dir=$2; shift 2
  dpkg-source --no-check "$@" -x "$(dsc_of "$name" "$(pin "$name")")" "$dir" \
    || die "dpkg-source cannot unpack $name $(pin "$name")"
}
# Long commands run in the background and are waited for: a signal's trap then runs at once
# (bash runs traps only between commands, and `wait` is interrupted by a signal).
run_bg() { "$@" & wait $!; }
in_dir() { cd "$1" && shift && "$@"; }

# ---------------------------------------------------------------------------------- steps
step() {  # step NAME CMD...: run CMD in a subshell logging to logs/NAME.log; fail naming it
  local name=$1; shift
  local log=$CACHE/logs/$name.log s0=$SECONDS
  : >"$log"
  set +e
  # `times`, line 2: the CPU time of every process the step waited for (make, cc, ...).
  ( set -e; "$@"; times >"$T/times-$name" ) >>"$log" 2>&1 9>&-
  local rc=$?
  set -e
  [ "$rc" = 0 ] || { tail -n 30 "$log" >&2; die "$name failed (log: $log)"; }
  say "$name: $((SECONDS - s0)) s, $(cpu_seconds "$T/times-$name") CPU-s"
}
cpu_seconds() {  # the user+sys seconds in the output of `times`
  awk '{ for (i = 1; i <= NF; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } }
       END { printf "%.0f", t }' "$1"
}
build_lib() {  # build_lib NAME: the library's cache entry, built unless it is there
  local name=$1 dir; dir=$(lib_dir "$1")
  if done_lib "$name"; then say "$name: cached ($dir)"; return 0; fi
  local work=$T/lib-$name
  mkdir -p "$work"
  run_lib() {
    unpack "$name" "$work/src" && cd "$work/src"
    DEST=$work/out "$(fn_of "$name")"
    touch "$work/out/.complete"
  }
  step "$name" run_lib
  rm -rf "$dir"
  mv "$work/out" "$dir"
  rm -rf "$work"
}
lane() { local p; for p in "$@"; do build_lib "$p"; done; }

t0=$SECONDS
todo=()
for p in "${LIBS_A[@]}" "${LIBS_B[@]}"; do done_lib "$p" || todo+=("$p"); done
for p in python3.11 expat "${todo[@]}"; do fetch "$p"; done
say "sources ready ($((SECONDS - t0)) s)"

if ! [ -x "$CACHE/ziglang-$ZIGVER/bin/python" ] \
    || ! "$CACHE/ziglang-$ZIGVER/bin/python" -m ziglang version >/dev/null 2>&1; then
  say "ziglang $ZIGVER from PyPI"
  # Made in the build's directory and moved in whole (the venv's python finds its prefix from
  # pyvenv.cfg beside it, so the move is safe for `python -m ziglang`).
  { run_bg python3 -m venv "$T/ziglang" \
    && run_bg "$T/ziglang/bin/python" -m pip install -q --disable-pip-version-check \
      "ziglang==$ZIGVER"; } >>"$FETCH_LOG" 2>&1 \
    || die "cannot install ziglang==$ZIGVER from PyPI (log: $FETCH_LOG)"
  rm -rf "$CACHE/ziglang-$ZIGVER"
  mv "$T/ziglang" "$CACHE/ziglang-$ZIGVER"
fi
ZIG=$("$CACHE/ziglang-$ZIGVER/bin/python" -c \
  'import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')
# zig's global cache keeps what every link needs (glibc 2.17's stubs, compiler-rt), built once;
# its per-compile cache lives and dies with this build.
export ZIG_GLOBAL_CACHE_DIR=$CACHE/zig-cache ZIG_LOCAL_CACHE_DIR=$T/zig-local
toolchain "$T"

# The two lanes run side by side; the first failure stops the other.
lane "${LIBS_A[@]}" 9>&- &
pid_a=$!
lane "${LIBS_B[@]}" 9>&- &
pid_b=$!
pending=("$pid_a" "$pid_b")
while [ ${#pending[@]} -gt 0 ]; do
  set +e
  wait -n -p finished "${pending[@]}"
  rc=$?
  set -e
  [ "$rc" = 0 ] || die "a static library failed to build (see above)"
  left=()
  for p in "${pending[@]}"; do [ "$p" = "$finished" ] || left+=("$p"); done
  pending=(${left[@]+"${left[@]}"})
done
say "static libraries ready ($((SECONDS - t0)) s)"

# CPython links against one prefix holding every library.
DEPS=$T/deps
mkdir -p "$DEPS"
for p in "${LIBS_A[@]}" "${LIBS_B[@]}"; do cp -a "$(lib_dir "$p")/." "$DEPS/"; done
rm -f "$DEPS/.complete"
run_cpython() {
  unpack python3.11 "$T/cpython" --skip-patches && cd "$T/cpython"
  build_cpython
}
step cpython run_cpython &
wait $! || exit 1

PY=$T/result$PREFIX/bin/python3.11
check_python "$PY" >&2 || die "the built interpreter lacks a required module (log: $CACHE/logs/cpython.log)"
rm -rf "$RESULT"
mv "$T/result" "$RESULT"
times >"$T/times-all"
say "bundled Python built in $((SECONDS - t0)) s, $(cpu_seconds "$T/times-all") CPU-s: $RESULT"
echo "$RESULT$PREFIX"
}

main "$@"
