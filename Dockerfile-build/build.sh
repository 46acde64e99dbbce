#!/usr/bin/env bash
# Builds iscsi-ha's artefacts. The Dockerfile beside this script runs it inside the manylinux2014
# image (glibc 2.17, like the dom0); CI runs the same steps on its own machine, where no container
# engine exists:
#
#   Dockerfile-build/build.sh [STEP...]      STEP: wheel rpm-tree rpm inspect (default: all four)
#
#   wheel     sdist and wheel into $OUT (the wheel is built from the sdist, which proves the
#             sdist is complete)
#   rpm-tree  /opt/iscsi-ha staged under $WORK/stage: a copy of $PYTHON's interpreter made
#             relocatable, and a virtualenv on top of it holding the wheel (stage_tree.py)
#   rpm       rpmbuild -bb packaging/iscsi-ha.spec over that tree, the .rpm into $OUT
#   inspect   file list, %config flags, scriptlets, dependencies of the .rpm; then the payload is
#             unpacked and run at its real path, /opt/iscsi-ha, in a private mount namespace
#             (inspect_rpm.py)
#
# Environment: PYTHON (the interpreter to build with and to bundle; default python3), OUT (default
# <repo>/dist), WORK (default <repo>/build/pkg), STRICT_GLIBC=1 to fail (not warn) when the RPM
# needs a glibc newer than MAX_GLIBC (default 2.17, the dom0's).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$REPO/dist}
WORK=${WORK:-$REPO/build/pkg}
PREFIX=/opt/iscsi-ha
STAGE=$WORK/stage
INFO=$WORK/stage-info.json
export STRICT_GLIBC=${STRICT_GLIBC:-0} MAX_GLIBC=${MAX_GLIBC:-2.17}

say() { printf '== %s\n' "$*"; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

# A python that has `build` and a pip with --python (22.3+): $PYTHON itself when it qualifies (a
# project virtualenv with the `test` extra does), else a tools virtualenv made once under $WORK.
tools_python() {
  if "$PYTHON" - <<'EOF' 2>/dev/null
import build, pip
raise SystemExit(0 if tuple(int(x) for x in pip.__version__.split(".")[:2]) >= (22, 3) else 1)
EOF
  then
    echo "$PYTHON"; return
  fi
  local tools=$WORK/tools
  if [ ! -x "$tools/bin/python" ]; then
    # (die would only leave this $(...) subshell; the caller's assignment then fails the script)
    "$PYTHON" -m venv "$tools" >&2 && "$tools/bin/python" -m pip install -q \
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
  "$py" -m build --outdir "$OUT" "$REPO" >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log" >&2; die "python -m build failed (log: $WORK/build.log)"; }
  ls -l "$OUT"/iscsi_ha-*
}

step_rpm_tree() {
  local wheel py; wheel=$(the_wheel); py=$(tools_python)
  command -v patchelf >/dev/null || say "note: patchelf not found (needed if the interpreter links libraries outside the system directories)"
  say "staging $PREFIX from $wheel"
  "$PYTHON" "$HERE/stage_tree.py" --python "$PYTHON" --pip-python "$py" --wheel "$wheel" \
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
  mkdir -p "$OUT" "$WORK/rpmbuild"
  rm -f "$OUT"/iscsi-ha-*.rpm
  say "rpmbuild iscsi-ha $version"
  rpmbuild -bb "$REPO/packaging/iscsi-ha.spec" \
    --define "_topdir $WORK/rpmbuild" \
    --define "_rpmdir $OUT" \
    --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    --define "_stage $STAGE" \
    --define "pkg_version $version" \
    ${defines[@]+"${defines[@]}"} \
    >"$WORK/rpmbuild.log" 2>&1 \
    || { tail -n 40 "$WORK/rpmbuild.log" >&2; die "rpmbuild failed (log: $WORK/rpmbuild.log)"; }
  ls -l "$OUT"/iscsi-ha-*.rpm
}

step_inspect() {
  local rpms=("$OUT"/iscsi-ha-*.rpm)
  [ -e "${rpms[0]}" ] || die "no RPM in $OUT: run the 'rpm' step first"
  "$PYTHON" "$HERE/inspect_rpm.py" --rpm "${rpms[0]}" --prefix "$PREFIX" \
    --unit "$REPO/packaging/iscsi-ha.service" --work "$WORK/inspect"
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(wheel rpm-tree rpm inspect)
for s in "${steps[@]}"; do
  case "$s" in
    wheel) timed wheel step_wheel ;;
    rpm-tree) timed rpm-tree step_rpm_tree ;;
    rpm) timed rpm step_rpm ;;
    inspect) timed inspect step_inspect ;;
    *) die "unknown step '$s' (steps: wheel rpm-tree rpm inspect)" ;;
  esac
done
