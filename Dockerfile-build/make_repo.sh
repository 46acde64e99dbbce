#!/usr/bin/env bash
# A yum repository of the RPMs in a directory, for the dom0's yum 3 (CentOS 7):
#
#   Dockerfile-build/make_repo.sh [DIR] [BASEURL]     (make repo: DIR=dist)
#
# writes DIR/repodata (createrepo_c; gzip-compressed XML and sqlite databases, sha256: what
# yum 3.4 reads) and DIR/iscsi-ha.repo, a repository definition that is *disabled*: a dom0 runs
# with the vendor's repositories only, and `yum --disablerepo='*' --enablerepo=iscsi-ha install
# iscsi-ha` installs from this one alone (everything the package needs is in the dom0 base).
# BASEURL is where DIR will be served from (default file:///var/local/iscsi-ha-repo: copy DIR there).
set -euo pipefail
DIR=${1:-dist}
BASEURL=${2:-file:///var/local/iscsi-ha-repo}
command -v createrepo_c >/dev/null || { echo "make_repo: createrepo_c not found (apt-get install createrepo-c)" >&2; exit 1; }
shopt -s nullglob
rpms=("$DIR"/iscsi-ha-*.rpm)
[ ${#rpms[@]} -gt 0 ] || { echo "make_repo: no iscsi-ha RPM in $DIR: run 'make rpm' first" >&2; exit 1; }
# Built beside, swapped in whole: a reader never sees half-written metadata.
rm -rf "$DIR/.repodata" "$DIR/repodata.old" "$DIR/.repodata.out"
mkdir -p "$DIR/.repodata.out"
createrepo_c --quiet --database --general-compress-type=gz --checksum=sha256 \
  --outputdir "$DIR/.repodata.out" "$DIR"
mv "$DIR/.repodata.out/repodata" "$DIR/.repodata" && rmdir "$DIR/.repodata.out"
[ ! -d "$DIR/repodata" ] || mv "$DIR/repodata" "$DIR/repodata.old"
mv "$DIR/.repodata" "$DIR/repodata"
rm -rf "$DIR/repodata.old"
cat >"$DIR/iscsi-ha.repo.tmp" <<REPO
# /etc/yum.repos.d/iscsi-ha.repo: iscsi-ha for the dom0 of XCP-ng 8.x / XenServer 8.
# Disabled on purpose: install and update with this repository alone, e.g.
#   yum --disablerepo='*' --enablerepo=iscsi-ha install iscsi-ha
[iscsi-ha]
name=iscsi-ha (DRBD + iSCSI storage following the pool master)
baseurl=$BASEURL
enabled=0
# The packages are not signed; serve this repository from a host you trust (or over file://).
gpgcheck=0
REPO
mv "$DIR/iscsi-ha.repo.tmp" "$DIR/iscsi-ha.repo"
echo "repository: $DIR/repodata ($(ls "$DIR"/repodata | wc -l) files), $DIR/iscsi-ha.repo -> $BASEURL"
