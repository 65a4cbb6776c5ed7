#!/bin/bash
# The CSI plugin's pod is replaced while an application reads through a
# volume the plugin published (issue 15), simulated twice:
#
#   pidns   the pod is a PID namespace (unshare --pid --fork, mount namespace
#           shared), deleted by killing its init, which kills everything in
#           it; the launcher (launcher.py service, standing in for
#           `systemd-run`) has an agent outside the namespace start lazarusfs.
#   cgroup  the pod is a cgroup v2 group, deleted through cgroup.kill as a
#           container runtime does for a pod on the host's PID namespace
#           (hostPID); the launcher (launcher.py scope, standing in for
#           `systemd-run --scope`) moves itself into another group and execs
#           lazarusfs.  Skipped when cgroup v2 with cgroup.kill is missing.
#
# Each: a plugin with --launcher stages and publishes a bindfs dataset, a
# reader opens a 64 MiB file through the published target and reads 8 MiB,
# the shell (which holds no descriptor of it) kills the pod; the proxy and
# its holder must not even notice (same pids, no restart).  A new plugin
# pod stages and publishes again (idempotent, nothing new started), the
# reader reads on through the same descriptor and every byte must match,
# and the new plugin unpublishes and unstages (OnDemand): the proxy, its
# holder and every mount go.  Then the control: the same without
# --launcher, where the pod's death must take the proxy with it (the reader
# gets ENOTCONN), which shows it is the launcher that saves the mount.
set -u
SRC_DIR=${SRC_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BUILD_DIR=$(cd "${BUILD_DIR:-$SRC_DIR}" && pwd)
HERE=$SRC_DIR/tests/integration
PY=/usr/bin/python3
START=$(date +%s)

[ -c /dev/fuse ] || { echo "SKIP: /dev/fuse is absent"; exit 77; }
"$PY" -c 'import grpc' 2>/dev/null || { echo "SKIP: python3-grpcio is not installed"; exit 77; }
for p in lazarusfs lazarusfs-csi lazarusctl; do
	[ -x "$BUILD_DIR/$p" ] || { echo "FAIL: $BUILD_DIR/$p not built"; exit 1; }
done
for c in bindfs unshare protoc-c; do
	command -v "$c" >/dev/null || { echo "FAIL: $c is not installed (install-deps.sh)"; exit 1; }
done

T=$(mktemp -d /tmp/lztest-pod.XXXXXX)
MNT=$T/runtime-mnt KUB=$T/kubelet ETC=$T/etc STATE=$T/state DATA=$T/data
SOCK=$T/csi.sock AGENT_PID= CG= POD_PID= POD_INIT= READER=
mkdir -p "$MNT" "$KUB" "$ETC" "$STATE" "$DATA"

# Processes whose command line names our directory: plugins, proxies,
# engines, the agent, the reader.
our_pids() {
	local d p
	for d in /proc/[0-9]*; do
		p=${d#/proc/}
		[ "$p" != $$ ] || continue
		{ tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null | grep -q -- "$T/" && echo "$p"
	done
	return 0
}

cleanup() {
	local rc=$? i m p
	trap - EXIT
	[ -z "$CG" ] || for g in "$CG"/*/; do echo 1 >"$g/cgroup.kill"; done 2>/dev/null
	for p in $(our_pids); do kill -9 "$p" 2>/dev/null; done
	for i in 1 2 3 4 5; do
		grep -q " $T/" /proc/self/mountinfo || break
		awk -v t="$T/" 'index($5, t) == 1 {print $5}' /proc/self/mountinfo | sort -r |
			while read -r m; do umount -l "$m" 2>/dev/null; done
		sleep 0.1
	done
	for p in $(our_pids); do kill -9 "$p" 2>/dev/null; done
	wait 2>/dev/null
	if [ -n "$CG" ]; then
		for i in $(seq 50); do
			rmdir "$CG"/*/ "$CG" 2>/dev/null
			[ -d "$CG" ] || break
			sleep 0.1
		done
	fi
	rm -rf "$T"
	echo "lazarusfs-test-seconds: $(($(date +%s) - START))"
	exit $rc
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*"
	for f in "$T"/shim.*.log; do
		[ -f "$f" ] && { echo "--- $(basename "$f")"; tail -n 15 "$f"; }
	done
	tail -n 15 "$STATE"/*/lazarusfs.log 2>/dev/null
	echo "FAIL: $*"
	exit 1
}

wait_for() {
	local t=$1
	shift
	for _ in $(seq $((t * 20))); do
		"$@" && return 0
		sleep 0.05
	done
	return 1
}

alive() { [ -d "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
dead() { ! alive "$1"; }
mounted() { grep -q " $1 " /proc/self/mountinfo; }
not_mounted() { ! mounted "$1"; }
# mount_line POINT: device, root and type of the mounts at POINT
mount_line() {
	awk -v p="$1" '$5 == p { for (i = 7; $i != "-"; i++); print $3, $4, $(i + 1) }' \
		/proc/self/mountinfo
}

# pids whose command line has the word $1 (a mount point): its proxy and holder
procs_at() {
	local d
	for d in /proc/[0-9]*; do
		{ tr '\0' '\n' <"$d/cmdline"; } 2>/dev/null | grep -qx -- "$1" && echo "${d#/proc/}"
	done
	return 0
}
no_procs_at() { [ -z "$(procs_at "$1")" ]; }

rpc() {
	"$PY" "$HERE/csi_grpc.py" "$SRC_DIR/src/csi-shim/csi.proto" "$SOCK" "$@"
}
# rpc_ok METHOD JSON WHAT: the call must succeed
rpc_ok() {
	local out
	out=$(rpc "$1" "$2") || fail "$3: $out"
}

head -c $((64 << 20)) /dev/urandom >"$DATA/big.bin" || fail "cannot write the test file"
echo small >"$DATA/small.txt"

# ---- the pod: a PID namespace or a cgroup ---------------------------------

CG_ROOT=
for r in /sys/fs/cgroup /sys/fs/cgroup/unified; do
	[ -f "$r/cgroup.procs" ] && [ -f "$r/cgroup.controllers" ] && { CG_ROOT=$r; break; }
done
if [ -n "$CG_ROOT" ] && mkdir "$CG_ROOT/${T##*/}" 2>/dev/null; then
	CG=$CG_ROOT/${T##*/}
	if [ -f "$CG/cgroup.kill" ]; then
		mkdir "$CG/outside" || fail "cannot create cgroup $CG/outside"
	else
		rmdir "$CG"
		CG=
	fi
fi

# start_pod KIND N LAUNCH: start plugin instance N in a new pod of KIND;
# LAUNCH=yes gives it the launcher of that KIND.  Sets POD_PID (what to
# wait for) and POD_INIT (the pod's first process: its init, or the plugin).
start_pod() {
	local kind=$1 n=$2 launch=$3 args
	args=("$BUILD_DIR/lazarusfs-csi" --endpoint "unix://$SOCK" --nodeid node-1
	      --mount-root "$MNT" --kubelet-root "$KUB" --config-dir "$ETC"
	      --state-dir "$STATE" --lazarusfs "$BUILD_DIR/lazarusfs"
	      --clean-policy OnDemand --mount-timeout 15)
	case $kind.$launch in
	pidns.yes) args+=(--launcher "$PY $HERE/launcher.py service $T/agent.sock --") ;;
	cgroup.yes) args+=(--launcher "$PY $HERE/launcher.py scope $CG/outside --") ;;
	esac
	case $kind in
	pidns)
		unshare --pid --fork -- "${args[@]}" 2>>"$T/shim.$n.log" &
		POD_PID=$!
		wait_for 5 grep -q . "/proc/$POD_PID/task/$POD_PID/children" ||
			fail "pod $n: unshare started no init"
		POD_INIT=$(cat "/proc/$POD_PID/task/$POD_PID/children")
		POD_INIT=${POD_INIT% }
		[ "$(readlink "/proc/$POD_INIT/ns/pid")" != "$(readlink /proc/self/ns/pid)" ] ||
			fail "pod $n: the plugin is not in a PID namespace of its own"
		;;
	cgroup)
		mkdir "$CG/pod$n" || fail "cannot create cgroup $CG/pod$n"
		"$PY" "$HERE/launcher.py" scope "$CG/pod$n" -- "${args[@]}" 2>>"$T/shim.$n.log" &
		POD_PID=$!
		POD_INIT=$POD_PID
		wait_for 5 grep -qx "$POD_PID" "$CG/pod$n/cgroup.procs" ||
			fail "pod $n: the plugin did not enter its cgroup"
		;;
	esac
	# the socket of a killed plugin is still there until this one replaces it
	wait_for 10 grep -q '^lazarusfs-csi: serving' "$T/shim.$n.log" || fail "pod $n: not serving"
	[ -S "$SOCK" ] || fail "pod $n: no CSI socket"
	POD_KIND=$kind POD_N=$n
}

# in_pod PID: is PID a member of the current pod
in_pod() {
	case $POD_KIND in
	pidns) [ "$(readlink "/proc/$1/ns/pid")" = "$(readlink "/proc/$POD_INIT/ns/pid")" ] ;;
	cgroup) grep -qx "0::${CG#"$CG_ROOT"}/pod$POD_N" "/proc/$1/cgroup" ;;
	esac
}

# kill_pod: what deleting the pod does to every process in it
kill_pod() {
	case $POD_KIND in
	pidns) kill -9 "$POD_INIT" ;;
	cgroup) echo 1 >"$CG/pod$POD_N/cgroup.kill" ;;
	esac
	wait "$POD_PID" 2>/dev/null
	wait_for 5 dead "$POD_INIT" || fail "the plugin survived the death of its pod"
	if [ "$POD_KIND" = cgroup ]; then
		wait_for 5 grep -q 'populated 0' "$CG/pod$POD_N/cgroup.events" ||
			fail "processes left in the killed pod's cgroup"
	fi
}

# stop_pod: SIGTERM to the plugin (the pod's init in a PID namespace) must
# end it cleanly
stop_pod() {
	kill -TERM "$POD_INIT"
	wait "$POD_PID" || fail "pod $POD_N: the plugin did not exit 0 on SIGTERM"
	[ ! -e "$SOCK" ] || fail "pod $POD_N: socket left after SIGTERM"
}

# reader_go: let the reader go on and wait for its verdict
reader_go() {
	echo go 1<>"$T/go"	# read-write: never blocks, even if the reader died
	wait "$READER"
}

# ---- one round ---------------------------------------------------------------

vol_json() {	# vol_json NAME: what stage and publish share
	echo "\"volume_id\": \"default-$1\", \"staging_target_path\": \"$KUB/plugins/kubernetes.io/csi/fuse.csi.fluid.io/default-$1/globalmount\", \"volume_capability\": {\"mount\": {}, \"access_mode\": {\"mode\": \"SINGLE_NODE_WRITER\"}}, \"volume_context\": {\"fluid_path\": \"$MNT/juicefs/default/$1/juicefs-fuse\", \"mount_type\": \"JuiceFS\", \"runtime_namespace\": \"default\", \"runtime_name\": \"$1\"}"
}

# round KIND LAUNCH
round() {
	local kind=$1 launch=$2 name fluid tgt v proxy holder backend before out pids p
	name=$kind-$launch
	fluid=$MNT/juicefs/default/$name/juicefs-fuse
	tgt=$KUB/pods/app-$name/volumes/kubernetes.io~csi/default-$name/mount
	v=$(vol_json "$name")
	printf 'source = %s\nengine = bindfs\n' "$DATA" >"$ETC/default-$name.conf"

	start_pod "$kind" "$name-1" "$launch"
	rpc_ok NodeStageVolume "{$v}" "$name: stage"
	rpc_ok NodePublishVolume "{$v, \"target_path\": \"$tgt\"}" "$name: publish"
	[ "$(mount_line "$fluid" | cut -d' ' -f3)" = fuse.lazarusfs ] || fail "$name: no lazarusfs at fluid_path"
	mounted "$tgt" || fail "$name: nothing published at the target"
	before=$(mount_line "$fluid")
	mapfile -t pids < <(procs_at "$fluid")
	[ ${#pids[@]} -ge 2 ] || fail "$name: expected the proxy and its holder, found: ${pids[*]}"
	for p in "${pids[@]}"; do
		if [ "$launch" = yes ]; then
			! in_pod "$p" || fail "$name: lazarusfs process $p was started inside the pod"
		else
			in_pod "$p" || fail "$name: without a launcher lazarusfs process $p is outside the pod"
		fi
	done
	if [ "$launch" = yes ]; then
		proxy=$("$BUILD_DIR/lazarusctl" --state-dir "$STATE" status "$fluid" | sed -n 's/^proxy_pid: //p')
		holder=$("$BUILD_DIR/lazarusctl" --state-dir "$STATE" status "$fluid" | sed -n 's/^holder_pid: //p')
		backend=$("$BUILD_DIR/lazarusctl" --state-dir "$STATE" status "$fluid" | sed -n 's/^backend: //p')
		alive "$proxy" && alive "$holder" || fail "$name: proxy '$proxy' or holder '$holder' not running"
		echo "ok - $name: staged and published; proxy $proxy and holder $holder are outside the pod"
	else
		echo "ok - $name: staged and published; lazarusfs (pids ${pids[*]}) runs inside the pod"
	fi

	rm -f "$T/go"
	mkfifo "$T/go"
	"$PY" "$HERE/pod_reader.py" "$tgt/big.bin" "$DATA/big.bin" $((8 << 20)) "$T/go" \
		"$([ "$launch" = yes ] && echo survive || echo die)" >"$T/reader.out" 2>&1 &
	READER=$!
	wait_for 20 grep -q '^ready' "$T/reader.out" || fail "$name: reader: $(cat "$T/reader.out")"

	kill_pod
	if [ "$launch" = no ]; then
		reader_go
		grep -q '^ok' "$T/reader.out" || fail "$name (control): $(cat "$T/reader.out")"
		echo "ok - $name: the pod's death killed lazarusfs; $(tail -n 1 "$T/reader.out")"
		wait_for 10 no_procs_at "$fluid" || fail "$name: lazarusfs survived its pod: $(procs_at "$fluid")"
		out=$(stat "$tgt" 2>&1) && fail "$name: the published target still answers"
		case $out in *"not connected"*) ;; *) fail "$name: stat of the target: $out" ;; esac
		# Nobody is left to unmount the dead engine's backend (the next
		# lazarusfs on this path would); a new plugin cleans up the rest,
		# as kubelet has it unpublish and unstage the volume.
		awk -v t="$STATE/" 'index($5, t) == 1 {print $5}' /proc/self/mountinfo |
			while read -r m; do umount -l "$m"; done
		start_pod "$kind" "$name-2" no
		rpc_ok NodeUnpublishVolume "{\"volume_id\": \"default-$name\", \"target_path\": \"$tgt\"}" "$name: unpublish of the dead target"
		rpc_ok NodeUnstageVolume "{\"volume_id\": \"default-$name\", \"staging_target_path\": \"$KUB/plugins/kubernetes.io/csi/fuse.csi.fluid.io/default-$name/globalmount\"}" "$name: unstage of the dead volume"
		! grep " $T/" /proc/self/mountinfo || fail "$name: dead mounts left behind"
		[ -z "$(ls "$STATE/csi")" ] || fail "$name: records left: $(ls "$STATE/csi")"
		stop_pod
		echo "ok - $name: the target is dead (ENOTCONN) without a launcher; a new plugin unpublishes and unstages it"
		return
	fi

	alive "$proxy" && alive "$holder" || fail "$name: the pod's death killed proxy $proxy or holder $holder"
	[ "$(mount_line "$fluid")" = "$before" ] || fail "$name: the mount at fluid_path changed"
	[ "$(cat "$tgt/small.txt" 2>&1)" = small ] || fail "$name: the target does not answer after the pod's death"
	out=$("$BUILD_DIR/lazarusctl" --state-dir "$STATE" status "$fluid")
	[ "$(sed -n 's/^proxy_pid: //p' <<<"$out")" = "$proxy" ] &&
		[ "$(sed -n 's/^proxy_restarts: //p' <<<"$out")" = 0 ] ||
		fail "$name: the proxy was replaced: $out"
	echo "ok - $name: pod killed; proxy $proxy still serves, no restart"

	start_pod "$kind" "$name-2" yes
	rpc_ok NodeStageVolume "{$v}" "$name: stage by the new plugin"
	rpc_ok NodePublishVolume "{$v, \"target_path\": \"$tgt\"}" "$name: publish by the new plugin"
	[ "$(mount_line "$fluid")" = "$before" ] || fail "$name: the new plugin changed the mount at fluid_path"
	[ "$(grep -c " $tgt " /proc/self/mountinfo)" = 1 ] || fail "$name: the new plugin stacked a bind on the target"
	! grep -q 'starting lazarusfs' "$T/shim.$name-2.log" || fail "$name: the new plugin started another lazarusfs"
	out=$(rpc NodeGetVolumeStats "{\"volume_id\": \"default-$name\", \"volume_path\": \"$tgt\"}") ||
		fail "$name: stats by the new plugin: $out"
	! grep -q '"abnormal": true' <<<"$out" || fail "$name: volume condition abnormal: $out"
	echo "ok - $name: a new plugin pod adopts the mount: stage and publish succeed and change nothing"

	reader_go
	grep -q '^ok' "$T/reader.out" || fail "$name: reader: $(cat "$T/reader.out")"
	echo after >"$tgt/after.txt" && [ "$(cat "$DATA/after.txt")" = after ] ||
		fail "$name: a write through the target did not reach the dataset"
	echo "ok - $name: the descriptor opened before the pod's death reads on; $(tail -n 1 "$T/reader.out")"

	rpc_ok NodeUnpublishVolume "{\"volume_id\": \"default-$name\", \"target_path\": \"$tgt\"}" "$name: unpublish"
	rpc_ok NodeUnstageVolume "{\"volume_id\": \"default-$name\", \"staging_target_path\": \"$KUB/plugins/kubernetes.io/csi/fuse.csi.fluid.io/default-$name/globalmount\"}" "$name: unstage"
	not_mounted "$tgt" && [ ! -e "$tgt" ] || fail "$name: the target is still there"
	not_mounted "$fluid" || fail "$name: unstage (OnDemand) left lazarusfs mounted"
	wait_for 10 dead "$proxy" && wait_for 10 dead "$holder" ||
		fail "$name: proxy $proxy or holder $holder outlived the unstage"
	wait_for 10 no_procs_at "$fluid" || fail "$name: processes left: $(procs_at "$fluid")"
	wait_for 10 no_procs_at "$backend" || fail "$name: the engine is left: $(procs_at "$backend")"
	! grep " $T/" /proc/self/mountinfo || fail "$name: mounts left behind"
	[ -z "$(ls "$STATE/csi")" ] || fail "$name: records left: $(ls "$STATE/csi")"
	echo "ok - $name: the new plugin unpublishes and unstages: proxy, holder and mounts gone"

	stop_pod
}

# ---- run ---------------------------------------------------------------------

"$PY" "$HERE/launcher.py" agent "$T/agent.sock" 2>>"$T/agent.log" &
AGENT_PID=$!
wait_for 5 test -S "$T/agent.sock" || fail "the launcher agent did not start"

# a bad --launcher is refused at start
out=$("$BUILD_DIR/lazarusfs-csi" --endpoint "unix://$SOCK" --nodeid node-1 --mount-root "$MNT" \
	--kubelet-root "$KUB" --state-dir "$STATE" --launcher "systemd-run --unit=lz-{Id}" 2>&1) &&
	fail "an unknown placeholder in --launcher was accepted"
case $out in *"unknown placeholder {Id} in --launcher"*) ;; *) fail "bad --launcher: $out" ;; esac
echo "ok - an unknown placeholder in --launcher is refused: $out"

round pidns yes
round pidns no
if [ -n "$CG" ]; then
	round cgroup yes
	round cgroup no
else
	echo "SKIP of the cgroup part: no cgroup v2 hierarchy with cgroup.kill"
fi
kill "$AGENT_PID"
echo "all ok"
