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
# * Cache: ${ISCSI_HA_BUILD_CACHE:-<repo>/.cache/build}/python-KEY, KEY = sha256 of this script
#   and python-sources.txt. A hit prints the path at once; a build runs in a temporary directory
#   and is renamed into place only when complete, so an interrupted build leaves no entry.
#   Downloaded sources stay in CACHE/src and are reused (apt checks their hashes).
#
# Environment: ISCSI_HA_BUILD_CACHE, JOBS (default: number of CPUs), PYTHON_SOURCES (another pin
# list, for tests), DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
# The whole script is one function, read in full before it runs: editing this file during a build
# (its hash is the cache key) cannot make the running build execute half-old lines.
main() {

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
PINS=${PYTHON_SOURCES:-$HERE/python-sources.txt}
CACHE=${ISCSI_HA_BUILD_CACHE:-$REPO/.cache/build}
JOBS=${JOBS:-$(nproc)}
PREFIX=/opt/iscsi-ha/python
TARGET=x86_64-linux-gnu.2.17
SUITES="bookworm bookworm-updates"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Debian's python3.11 series: entries before this one adapt CPython to Debian's /usr layout.
FIRST_UPSTREAM_PATCH=shutdown-deadlock.diff

die() { printf 'build_python: %s\n' "$*" >&2; exit 1; }
say() { printf '== %s\n' "$*" >&2; }

pin() {  # pin NAME -> the pinned version of source package NAME
  local v; v=$(sed -n "s/^$1=//p" "$PINS")
  [ -n "$v" ] || die "$PINS: no version pinned for $1"
  echo "$v"
}

KEY=$(cat "$0" "$PINS" | sha256sum | cut -c1-16)
RESULT=$CACHE/python-$KEY
if [ -x "$RESULT$PREFIX/bin/python3.11" ]; then
  say "bundled Python: cached ($RESULT)"
  echo "$RESULT$PREFIX"
  exit 0
fi

mkdir -p "$CACHE/src" "$CACHE/apt/lists/partial" "$CACHE/apt/archives/partial"
# One build at a time per cache (two test runs, make rpm beside CI): the second waits, then
# finds the first one's result.
exec 9>"$CACHE/.lock"
flock 9
if [ -x "$RESULT$PREFIX/bin/python3.11" ]; then
  say "bundled Python: built meanwhile ($RESULT)"
  echo "$RESULT$PREFIX"
  exit 0
fi
T=$(mktemp -d "$CACHE/tmp-python-$KEY.XXXXXX")
trap 'rm -rf "$T"' EXIT
LOG=$CACHE/python-build.log
: >"$LOG"
t0=$SECONDS

# ------------------------------------------------------------------------------- the sources
APT_OPTS=(
  -o "Dir::Etc::sourcelist=$CACHE/apt/sources.list" -o "Dir::Etc::sourceparts=$CACHE/apt/none"
  -o "Dir::State::Lists=$CACHE/apt/lists" -o "Dir::Cache=$CACHE/apt" -o "Dir::Cache::pkgcache="
  -o "Dir::Cache::srcpkgcache=" -o "APT::Sandbox::User=root" -o "Acquire::Retries=2"
)
apt_updated=0
dsc_of() {  # dsc_of NAME VERSION -> path of the .dsc in CACHE/src
  echo "$CACHE/src/${1}_${2#*:}.dsc"
}
have_source() {  # the .dsc and every file it lists are in CACHE/src
  local dsc; dsc=$(dsc_of "$1" "$2")
  [ -f "$dsc" ] || return 1
  local f
  for f in $(awk '/^Files:/{on=1; next} /^[^ ]/{on=0} on{print $3}' "$dsc"); do
    [ -f "$CACHE/src/$f" ] || return 1
  done
}
fetch() {  # fetch NAME: the pinned source package into CACHE/src
  local name=$1 version; version=$(pin "$name")
  have_source "$name" "$version" && return 0
  if [ "$apt_updated" = 0 ]; then
    mkdir -p "$CACHE/apt/none"
    for s in $SUITES; do echo "deb-src $MIRROR $s main"; done >"$CACHE/apt/sources.list"
    say "apt-get update (deb-src of $SUITES only, private lists in $CACHE/apt)"
    apt-get "${APT_OPTS[@]}" update >>"$LOG" 2>&1 \
      || die "cannot read the source lists of $MIRROR ($SUITES): apt-get update failed (log: $LOG)"
    apt_updated=1
  fi
  say "source package $name $version"
  (cd "$CACHE/src" && apt-get "${APT_OPTS[@]}" source --download-only "$name=$version") \
    >>"$LOG" 2>&1 || die "cannot fetch the source package $name $version from $MIRROR" \
      "($SUITES): $(grep -E '^E:' "$LOG" | tail -n 2 | tr '\n' ' ')(log: $LOG)"
  have_source "$name" "$version" || die "source package $name $version: files missing after download"
}
unpack() {  # unpack NAME DIR [--skip-patches]: Debian source, with Debian's patches applied
  local name=$1 dir=$2; shift 2
  dpkg-source --no-check "$@" -x "$(dsc_of "$name" "$(pin "$name")")" "$dir" >>"$LOG" 2>&1 \
    || die "dpkg-source cannot unpack $name $(pin "$name") (log: $LOG)"
}

for p in python3.11 openssl libffi zlib bzip2 xz-utils sqlite3 expat; do fetch "$p"; done
say "sources ready ($((SECONDS - t0)) s)"

# ------------------------------------------------------------------------------ the compiler
ZIGVER=$(sed -n 's/^ziglang==//p' "$PINS")
ZIGENV=$CACHE/ziglang-$ZIGVER
if [ ! -x "$ZIGENV/bin/python" ] || ! "$ZIGENV/bin/python" -m ziglang version >/dev/null 2>&1; then
  say "ziglang $ZIGVER from PyPI"
  rm -rf "$ZIGENV"
  python3 -m venv "$ZIGENV" >>"$LOG" 2>&1
  "$ZIGENV/bin/python" -m pip install -q --disable-pip-version-check "ziglang==$ZIGVER" >>"$LOG" 2>&1 \
    || { rm -rf "$ZIGENV"; die "cannot install ziglang==$ZIGVER from PyPI (log: $LOG)"; }
fi
ZIG=$("$ZIGENV/bin/python" -c 'import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')
W=$T/bin
mkdir -p "$W"
# -fno-sanitize=all: zig cc turns UBSan traps on in unoptimised compiles (configure's probes).
# -Wno-error=date-time: zig makes __DATE__/__TIME__ an error; CPython's build info uses them.
printf '#!/bin/sh\nexec %q cc -target %s -fno-sanitize=all -Wno-error=date-time "$@"\n' \
  "$ZIG" "$TARGET" >"$W/cc"
printf '#!/bin/sh\nexec %q ar "$@"\n' "$ZIG" >"$W/ar"
# CPython's setup.py asks dpkg-architecture for Debian's multiarch directory and would add
# /usr/include/x86_64-linux-gnu (this machine's glibc 2.36 headers) to every module: not here.
printf '#!/bin/sh\nexit 1\n' >"$W/dpkg-architecture"
printf '#!/bin/sh\nexec %q ranlib "$@"\n' "$ZIG" >"$W/ranlib"
chmod +x "$W"/*
export ZIG_GLOBAL_CACHE_DIR=$CACHE/zig-cache ZIG_LOCAL_CACHE_DIR=$CACHE/zig-cache
export CC=$W/cc AR=$W/ar RANLIB=$W/ranlib CFLAGS="-O2 -g0 -fPIC" PATH=$W:$PATH
unset CPPFLAGS LDFLAGS LIBS PKG_CONFIG_PATH

DEPS=$T/deps
mkdir -p "$DEPS/include" "$DEPS/lib"
step() {  # step NAME CMD...: run a build step in the log, fail naming it
  local name=$1; shift
  local s0=$SECONDS
  echo "==== $name" >>"$LOG"
  # A subshell outside any `||`, so that set -e holds inside the step's function.
  set +e
  (set -e; "$@") >>"$LOG" 2>&1
  local rc=$?
  set -e
  [ "$rc" = 0 ] || { tail -n 30 "$LOG" >&2; die "$name failed (log: $LOG)"; }
  say "$name: $((SECONDS - s0)) s"
}

# -------------------------------------------------------------------- static C libraries
build_zlib() {
  unpack zlib "$T/zlib" && cd "$T/zlib"
  ./configure --static --prefix="$DEPS" && make -j"$JOBS" libz.a && make install
}
build_bzip2() {
  unpack bzip2 "$T/bzip2" && cd "$T/bzip2"
  make -j"$JOBS" CC="$CC" AR="$AR" RANLIB="$RANLIB" CFLAGS="$CFLAGS -D_FILE_OFFSET_BITS=64" libbz2.a
  cp libbz2.a "$DEPS/lib/" && cp bzlib.h "$DEPS/include/"
}
build_xz() {
  unpack xz-utils "$T/xz" && cd "$T/xz"
  ./configure --prefix="$DEPS" --disable-shared --enable-static --with-pic --disable-xz \
    --disable-xzdec --disable-lzmadec --disable-lzmainfo --disable-lzma-links --disable-scripts \
    --disable-doc --disable-nls
  make -j"$JOBS" -C src/liblzma && make -C src/liblzma install
}
build_libffi() {
  unpack libffi "$T/libffi" && cd "$T/libffi"
  # Static trampolines (3.4's default) do not compile here (tramp.c calls open_temp_exec_file,
  # which closures.c hides in this configuration); ctypes works with the classic closures.
  ./configure --prefix="$DEPS" --disable-shared --enable-static --with-pic --disable-docs \
    --disable-multi-os-directory --disable-exec-static-tramp
  make -j"$JOBS" && make install
}
build_sqlite() {
  unpack sqlite3 "$T/sqlite" && cd "$T/sqlite"
  # The source tree generates its amalgamation with tclsh (Debian: tcl).
  ./configure --prefix="$DEPS" --disable-shared --enable-static --with-pic --disable-tcl \
    --disable-readline --disable-editline --disable-load-extension
  make -j"$JOBS" libsqlite3.la
  cp .libs/libsqlite3.a "$DEPS/lib/" && cp sqlite3.h sqlite3ext.h "$DEPS/include/"
}
build_openssl() {
  unpack openssl "$T/openssl" && cd "$T/openssl"
  # The dom0's certificate store (/etc/pki/tls/cert.pem -> the CA bundle) is OpenSSL's default
  # there; no dynamic engines or providers to load from the host.
  ./Configure linux-x86_64 no-shared no-module no-tests no-dso \
    --prefix="$DEPS" --libdir=lib --openssldir=/etc/pki/tls -fPIC
  make -j"$JOBS" build_libs && make install_dev
}

# -------------------------------------------------------------------------------- CPython
build_cpython() {
  unpack python3.11 "$T/cpython" --skip-patches && cd "$T/cpython"
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
  # rest of the stdlib work without them.
  mkdir -p "$T/no-pkgconfig"
  PKG_CONFIG_LIBDIR=$T/no-pkgconfig PKG_CONFIG_PATH= ./configure --prefix="$PREFIX" --disable-shared --without-ensurepip --disable-test-modules \
    --with-openssl="$DEPS" --with-openssl-rpath=no \
    LIBS="-lpthread -ldl" CPPFLAGS="$inc" LDFLAGS="$lib" \
    LIBFFI_CFLAGS="$inc" LIBFFI_LIBS="$lib -lffi" \
    ZLIB_CFLAGS="$inc" ZLIB_LIBS="$lib -lz" \
    BZIP2_CFLAGS="$inc" BZIP2_LIBS="$lib -lbz2" \
    LIBLZMA_CFLAGS="$inc" LIBLZMA_LIBS="$lib -llzma" \
    LIBSQLITE3_CFLAGS="$inc" LIBSQLITE3_LIBS="$lib -lsqlite3 -lm" \
    OPT="-DNDEBUG -fwrapv -O2"
  make -j"$JOBS"
  make install DESTDIR="$T/result"
}

# The static libraries are cached on their own (key: the pins and these functions' text), so a
# change to the CPython step alone does not rebuild them.
local dkey
dkey=$(cat "$PINS" <(declare -f build_zlib build_bzip2 build_xz build_libffi build_sqlite \
  build_openssl) | sha256sum | cut -c1-16)
if [ -f "$CACHE/deps-$dkey/.complete" ]; then
  DEPS=$CACHE/deps-$dkey
  say "static libraries: cached ($DEPS)"
else
  step zlib build_zlib
  step bzip2 build_bzip2
  step xz build_xz
  step libffi build_libffi
  step sqlite build_sqlite
  step openssl build_openssl
  touch "$DEPS/.complete"
  rm -rf "$CACHE/deps-$dkey"
  mv "$DEPS" "$CACHE/deps-$dkey"
  DEPS=$CACHE/deps-$dkey
fi
step cpython build_cpython

PY=$T/result$PREFIX/bin/python3.11
# The modules a daemon with TLS, ctypes (bcrypt's cffi-free wheel needs none, but XenAPI over
# https needs ssl) and compressed logs uses must have been built, not silently skipped.
"$PY" -c 'import ssl, _ssl, hashlib, ctypes, zlib, bz2, lzma, sqlite3, json, decimal, _socket
import pyexpat, xml.etree.ElementTree, xmlrpc.client
print("bundled:", ssl.OPENSSL_VERSION, "sqlite", sqlite3.sqlite_version, pyexpat.EXPAT_VERSION)' >&2 \
  || die "the built interpreter lacks a required module (log: $LOG)"
rm -rf "$RESULT"
mv "$T/result" "$RESULT"
say "bundled Python built in $((SECONDS - t0)) s: $RESULT"
echo "$RESULT$PREFIX"
}

main "$@"
