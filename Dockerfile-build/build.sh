#!/usr/bin/env bash
# Builds iscsi-ha's artefacts on a Debian 12 machine (`make rpm` runs it; the Dockerfile beside
# this script runs it inside debian:bookworm for people who build in containers):
#
#   Dockerfile-build/build.sh [STEP...]   STEP: python wheel rpm-tree rpm audit inspect publish
#                                         (default: all, in that order)
#
#   python    the bundled CPython for glibc 2.17 (build_python.sh: zig cc over Debian's sources,
#             cached in ${ISCSI_HA_BUILD_CACHE:-.cache/build}; seconds when cached)
#   wheel     sdist and wheel into $OUT (the wheel is built from the sdist, which proves the
#             sdist is complete)
#   rpm-tree  /opt/iscsi-ha staged under $WORK/stage: that interpreter plus a virtualenv holding
#             the wheel and manylinux2014 wheels of its dependencies (stage_tree.py)
#   rpm       rpmbuild -bb packaging/iscsi-ha.spec over that tree into $WORK/rpms
#   audit     every ELF <= GLIBC_2.17 with EL7 libraries only, and `rpm -i --test` against the EL7
#             capability models (audit_rpm.py); any finding fails the build
#   inspect   files, %config flags, scriptlets; the payload run at /opt/iscsi-ha in a private
#             mount namespace (inspect_rpm.py)
#   publish   the audited RPM into $OUT, by an atomic rename: $OUT never holds a half-built or
#             unaudited RPM
#
# Environment: PYTHON (runs the tools: needs `build` and pip >= 22.3, else a tools virtualenv is
# made; default python3), BUNDLED_PYTHON (skip the python step, use this interpreter; tests only),
# OUT (default <repo>/dist), WORK (default <repo>/build/pkg), ISCSI_HA_BUILD_CACHE, MAX_GLIBC
# (default 2.17), RELEASE (the RPM release, default 1).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$REPO/dist}
WORK=${WORK:-$REPO/build/pkg}
PREFIX=/opt/iscsi-ha
STAGE=$WORK/stage
INFO=$WORK/stage-info.json
RPMS=$WORK/rpms
export MAX_GLIBC=${MAX_GLIBC:-2.17}

say() { printf '== %s\n' "$*"; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

# A python that has `build` and a pip with --python (22.3+): $PYTHON itself when it qualifies (a
# project virtualenv with the `test` extra does), else a tools virtualenv made once under $WORK.
# -I everywhere: an isolated interpreter does not put the working directory on sys.path, where
# the repository's build/ folder would pass for the `build` package.
tools_python() {
  if "$PYTHON" -I - <<'EOF' 2>/dev/null
import build, pip
raise SystemExit(0 if tuple(int(x) for x in pip.__version__.split(".")[:2]) >= (22, 3) else 1)
EOF
  then
    echo "$PYTHON"; return
  fi
  local tools=$WORK/tools
  if [ ! -x "$tools/bin/python" ]; then
    # (die would only leave this $(...) subshell; the caller's assignment then fails the script)
    "$PYTHON" -I -m venv "$tools" >&2 && "$tools/bin/python" -I -m pip install -q \
      --disable-pip-version-check --upgrade pip build >&2 \
      || { rm -rf "$tools"; die "cannot make the tools virtualenv $tools with $PYTHON"; }
  fi
  echo "$tools/bin/python"
}

the_wheel() {
  local wheels=("$OUT"/iscsi_ha-*-py3-none-any.whl)
  [ -e "${wheels[0]}" ] || die "no wheel in $OUT: run the 'wheel' step first"
  [ ${#wheels[@]} -eq 1 ] || die "several wheels in $OUT (${wheels[*]}): remove the stale ones"
  echo "${wheels[0]}"
}

timed() {
  local name=$1; shift
  local t0=$SECONDS
  "$@"
  say "$name: $((SECONDS - t0)) s"
}

step_wheel() {
  mkdir -p "$OUT" "$WORK"
  rm -f "$OUT"/iscsi_ha-*.whl "$OUT"/iscsi_ha-*.tar.gz "$OUT"/iscsi-ha-*.tar.gz
  local py; py=$(tools_python)
  say "wheel + sdist with $py"
  "$py" -I -m build --outdir "$OUT" "$REPO" >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log" >&2; die "python -m build failed (log: $WORK/build.log)"; }
  ls -l "$OUT"/iscsi_ha-*
}

step_python() {
  mkdir -p "$WORK"
  if [ -n "${BUNDLED_PYTHON:-}" ]; then
    echo "$BUNDLED_PYTHON" >"$WORK/bundled-python"
  else
    # The prefix is the last line; build_python.sh logs to stderr and its own log file.
    "$HERE/build_python.sh" | tail -n 1 >"$WORK/bundled-python.tmp"
    mv "$WORK/bundled-python.tmp" "$WORK/bundled-python"
  fi
  say "bundled interpreter: $(cat "$WORK/bundled-python")"
}

bundled_python() {
  [ -f "$WORK/bundled-python" ] || die "no bundled interpreter chosen: run the 'python' step first"
  local prefix; prefix=$(cat "$WORK/bundled-python")
  local py=("$prefix"/bin/python3.*)
  [ -x "${py[0]}" ] || die "$prefix holds no bin/python3.X: rerun the 'python' step"
  echo "${py[0]}"
}

step_rpm_tree() {
  local wheel py bundled; wheel=$(the_wheel); py=$(tools_python); bundled=$(bundled_python)
  say "staging $PREFIX from $wheel on $bundled"
  "$PYTHON" "$HERE/stage_tree.py" --python "$bundled" --pip-python "$py" --wheel "$wheel" \
    --stage "$STAGE" --prefix "$PREFIX" --info "$INFO"
}

step_rpm() {
  command -v rpmbuild >/dev/null || die "rpmbuild not found (Debian: apt-get install rpm; EL: yum install rpm-build)"
  [ -f "$INFO" ] || die "no staged tree: run the 'rpm-tree' step first"
  local wheel version bundled
  wheel=$(the_wheel)
  version=$(basename "$wheel" | cut -d- -f2)
  # The sonames the tree carries itself, as one regex alternation for the spec's
  # __requires_exclude (the spec already refuses to provide them).
  bundled=$("$PYTHON" -c 'import json,sys; print("|".join(json.load(open(sys.argv[1]))["private_sonames"]))' "$INFO")
  local defines=()
  [ -z "$bundled" ] || defines=(--define "bundled_sonames $bundled")
  rm -rf "$RPMS" "$WORK/rpmbuild"
  mkdir -p "$RPMS" "$WORK/rpmbuild"
  say "rpmbuild iscsi-ha $version"
  rpmbuild -bb "$REPO/packaging/iscsi-ha.spec" \
    --define "_topdir $WORK/rpmbuild" \
    --define "_rpmdir $RPMS" \
    --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    --define "_stage $STAGE" \
    --define "pkg_version $version" \
    --define "pkg_release ${RELEASE:-1}" \
    ${defines[@]+"${defines[@]}"} \
    >"$WORK/rpmbuild.log" 2>&1 \
    || { tail -n 40 "$WORK/rpmbuild.log" >&2; die "rpmbuild failed (log: $WORK/rpmbuild.log)"; }
  ls -l "$RPMS"/iscsi-ha-*.rpm
}

the_rpm() {
  local rpms=("$RPMS"/iscsi-ha-*.rpm)
  [ -e "${rpms[0]}" ] || die "no RPM in $RPMS: run the 'rpm' step first"
  echo "${rpms[0]}"
}

step_audit() {
  local rpm; rpm=$(the_rpm)
  rm -f "$rpm.audited"
  "$PYTHON" "$HERE/audit_rpm.py" --rpm "$rpm" --provides "$REPO/packaging/el7-provides.txt" \
    --max-glibc "$MAX_GLIBC" --work "$WORK/audit" || die "audit failed: $rpm is not for the dom0"
  touch "$rpm.audited"
}

step_inspect() {
  local rpm; rpm=$(the_rpm)
  rm -f "$rpm.inspected"
  "$PYTHON" "$HERE/inspect_rpm.py" --rpm "$rpm" --prefix "$PREFIX" \
    --unit "$REPO/packaging/iscsi-ha.service" --work "$WORK/inspect" || die "inspect failed"
  touch "$rpm.inspected"
}

step_publish() {
  local rpm name; rpm=$(the_rpm); name=$(basename "$rpm")
  [ -e "$rpm.audited" ] && [ -e "$rpm.inspected" ] \
    || die "$name has not passed the audit and inspect steps: not publishing it"
  mkdir -p "$OUT"
  # Copy next to the target, then rename: readers of $OUT see the old RPM or the new one, whole.
  cp "$rpm" "$OUT/.$name.tmp"
  mv -f "$OUT/.$name.tmp" "$OUT/$name"
  local other
  for other in "$OUT"/iscsi-ha-*.rpm; do
    [ "$other" = "$OUT/$name" ] || rm -f "$other"
  done
  ls -l "$OUT/$name"
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(python wheel rpm-tree rpm audit inspect publish)
for s in "${steps[@]}"; do
  case "$s" in
    python) timed python step_python ;;
    wheel) timed wheel step_wheel ;;
    rpm-tree) timed rpm-tree step_rpm_tree ;;
    rpm) timed rpm step_rpm ;;
    audit) timed audit step_audit ;;
    inspect) timed inspect step_inspect ;;
    publish) timed publish step_publish ;;
    *) die "unknown step '$s' (steps: python wheel rpm-tree rpm audit inspect publish)" ;;
  esac
done
