#!/bin/bash
# The Debian packages, end to end on this machine: build them with
# dpkg-buildpackage from a copy of the tree (so the work tree is left as it
# is), check them with lintian, install them with dpkg -i, mount through
# mount(8) -> mount.fuse3 -> /usr/bin/lazarusfs twice (`mount -t
# fuse.lazarusfs` and an fstab line, read from a private fstab with
# `mount -T`), read a file through each, unmount, and purge the packages.
# The EXIT trap unmounts and purges too, so the machine is left as it was.
# Refuses to run when a lazarusfs package is already installed (purging it
# would change the machine).  80 s on 2 cores (140 s beside other jobs),
# most of it the build, which runs the unit tests (dh_auto_test).
. "$(dirname "$0")/lib.sh"

# tests/timed sends SIGTERM at its limit: exit so that the EXIT trap purges
trap 'exit 1' TERM INT

for p in lazarusfs lazarusfs-csi; do
	if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
		fail "package $p is already installed; this test would replace and purge it"
	fi
done
for t in dpkg-buildpackage dh lintian; do
	command -v "$t" >/dev/null || fail "$t is missing (install-deps.sh installs it)"
done
git -C "$SRC_DIR" rev-parse --git-dir >/dev/null 2>&1 || fail "$SRC_DIR is not a git checkout"

# pkg_cleanup: unmount what we mounted, wait for the proxies, purge
pkg_cleanup() {
	local m
	for m in "$T/mnt-t" "$T/mnt-fstab"; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
	done
	for _ in $(seq 50); do
		no_procs "$T/state" && break
		sleep 0.1
	done
	dpkg --purge lazarusfs-csi lazarusfs >/dev/null 2>&1
}
LZ_CLEANUP+=("pkg_cleanup")

# ---- build from a copy of the tracked files (as they are in the work tree)
mkdir "$T/pkg" "$T/pkg/src"
git -C "$SRC_DIR" ls-files -z |
	tar -C "$SRC_DIR" --null --ignore-failed-read -T - -cf - 2>/dev/null |
	tar -C "$T/pkg/src" -xf - || fail "copying the tree failed"
start=$(date +%s)
# not the environment of the make check that runs us (jobserver, sanitizer
# options, BUILD_DIR)
if ! (cd "$T/pkg/src" &&
      env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u BUILD_DIR -u SRC_DIR \
	  -u ASAN_OPTIONS -u UBSAN_OPTIONS -u LSAN_OPTIONS -u TSAN_OPTIONS \
	  dpkg-buildpackage -us -uc -b >"$T/pkg/build.log" 2>&1); then
	tail -n 40 "$T/pkg/build.log"
	fail "dpkg-buildpackage failed"
fi
echo "dpkg-buildpackage: $(($(date +%s) - start)) s"
DEB=$T/pkg/lazarusfs_0.1.0_$(dpkg --print-architecture).deb
DEB_CSI=$T/pkg/lazarusfs-csi_0.1.0_$(dpkg --print-architecture).deb
[ -f "$DEB" ] && [ -f "$DEB_CSI" ] || fail "no lazarusfs .debs in $T/pkg: $(ls "$T/pkg")"

# lintian: warnings are reported, errors fail
lintian --fail-on error "$T"/pkg/lazarusfs_*.changes >"$T/pkg/lintian.log" 2>&1 ||
	{ cat "$T/pkg/lintian.log"; fail "lintian reports errors"; }
grep -v 'running with root privileges' "$T/pkg/lintian.log"

# ---- contents
contents=$(dpkg-deb -c "$DEB" | awk '{print $6}')
for f in ./usr/bin/lazarusfs ./usr/bin/lazarusctl ./usr/share/man/man8/lazarusfs.8.gz \
	./usr/share/man/man8/lazarusctl.8.gz ./usr/share/man/man5/lazarusfs.conf.5.gz; do
	grep -qx -- "$f" <<<"$contents" || fail "lazarusfs package lacks $f"
done
contents=$(dpkg-deb -c "$DEB_CSI" | awk '{print $6}')
for f in ./usr/bin/lazarusfs-csi ./usr/share/man/man8/lazarusfs-csi.8.gz; do
	grep -qx -- "$f" <<<"$contents" || fail "lazarusfs-csi package lacks $f"
done
dpkg-deb -f "$DEB" Depends | grep -qw fuse3 || fail "lazarusfs does not depend on fuse3"
dpkg-deb -f "$DEB_CSI" Depends | grep -qw lazarusfs || fail "lazarusfs-csi does not depend on lazarusfs"

# ---- install (the libraries they link are there: the build needed them)
dpkg -i "$DEB" "$DEB_CSI" >"$T/pkg/install.log" 2>&1 ||
	{ cat "$T/pkg/install.log"; fail "dpkg -i failed"; }
# the state directory comes from --runstatedir=/run
/usr/bin/lazarusfs --help 2>&1 | grep -q '(/run/lazarusfs)' ||
	fail "installed lazarusfs does not default to /run/lazarusfs: $(/usr/bin/lazarusfs --help 2>&1 | grep state_dir)"
/usr/bin/lazarusfs-csi --help 2>&1 | grep -q '(/run/lazarusfs)' ||
	fail "installed lazarusfs-csi does not default to /run/lazarusfs"

mkdir -p "$T/src/sub" "$T/mnt-t" "$T/mnt-fstab"
seq 1 200000 >"$T/src/sub/numbers.txt"

# mnt: the proxy that serves MNT must be the packaged /usr/bin/lazarusfs,
# started by mount.fuse3; read a file through it, then unmount it
check_mount() {
	local mnt=$1 state=$2 pid
	grep -q " $mnt fuse.lazarusfs " /proc/mounts || fail "$mnt is not a fuse.lazarusfs mount"
	cmp "$T/src/sub/numbers.txt" "$mnt/sub/numbers.txt" || fail "read through $mnt differs"
	pid=$(pgrep -f -- "state_dir=$state" | head -n 1)
	[ -n "$pid" ] || fail "no lazarusfs process for $mnt"
	[ "$(readlink "/proc/$pid/exe")" = /usr/bin/lazarusfs ] ||
		fail "$mnt is served by $(readlink "/proc/$pid/exe"), not /usr/bin/lazarusfs"
	[ "$(/usr/bin/lazarusctl --state-dir "$state" status "$mnt" | sed -n 's/^engine: //p')" = bindfs ] ||
		fail "lazarusctl status $mnt: $(/usr/bin/lazarusctl --state-dir "$state" status "$mnt" 2>&1)"
	umount "$mnt" || fail "umount $mnt failed"
	grep -q " $mnt " /proc/mounts && fail "$mnt still mounted after umount"
	wait_for 5 no_procs "state_dir=$state" || fail "the proxy of $mnt did not exit"
}

# ---- mount -t fuse.lazarusfs
LZ_STATE=$T/state-t
mount -t fuse.lazarusfs "$T/src" "$T/mnt-t" -o "engine=bindfs,state_dir=$LZ_STATE" ||
	fail "mount -t fuse.lazarusfs failed"
check_mount "$T/mnt-t" "$LZ_STATE"
echo "ok: mount -t fuse.lazarusfs"

# ---- an fstab line (nofail and _netdev are mount(8)'s: mount.fuse3 drops them)
LZ_STATE=$T/state-fstab
echo "$T/src $T/mnt-fstab fuse.lazarusfs engine=bindfs,state_dir=$LZ_STATE,nofail,_netdev 0 0" >"$T/fstab"
mount -T "$T/fstab" "$T/mnt-fstab" || fail "mount -T FSTAB $T/mnt-fstab failed"
check_mount "$T/mnt-fstab" "$LZ_STATE"
echo "ok: fstab line"

# ---- purge leaves nothing
dpkg --purge lazarusfs-csi lazarusfs >"$T/pkg/purge.log" 2>&1 ||
	{ cat "$T/pkg/purge.log"; fail "dpkg --purge failed"; }
for p in lazarusfs lazarusfs-csi; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' && fail "$p still installed after purge"
done
for f in /usr/bin/lazarusfs /usr/bin/lazarusctl /usr/bin/lazarusfs-csi; do
	[ -e "$f" ] && fail "$f left after purge"
done
echo "ok: installed, mounted twice, purged in $(($(date +%s) - start)) s"
