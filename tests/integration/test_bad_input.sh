#!/bin/bash
# Bad input gets a clear error, a non-zero exit, and nothing is mounted;
# secrets (a meta URL password, engine_env values) never show up in ps,
# /proc/mounts or the logs.
. "$(dirname "$0")/lib.sh"

src=$T/src mnt=$T/mnt
mkdir -p "$src" "$mnt" "$T/state"
echo hi > "$src/f"

# bad_mount "EXPECTED MESSAGE" ARGS...: must fail, say so, mount nothing
bad_mount() {
	local want=$1
	shift
	if "$LAZARUSFS" "$@" >"$T/out" 2>&1; then
		fail "accepted: $*"
	fi
	grep -q -- "$want" "$T/out" || fail "for '$*' want '$want', got: $(cat "$T/out")"
	grep -q " $mnt " /proc/mounts && fail "mounted anyway: $*"
	echo "ok: $* -> $(head -n 1 "$T/out")"
}
S="state_dir=$T/state"
bad_mount "unknown engine profile 'nfs'" -o "$S,engine=nfs" "$src" "$mnt"
bad_mount "invalid value for start_timeout: 'soon'" -o "$S,engine=bindfs,start_timeout=soon" "$src" "$mnt"
bad_mount "invalid value for idle_timeout" -o "$S,engine=bindfs,idle_timeout=-1" "$src" "$mnt"
bad_mount "option hang_timeout needs a value" -o "$S,engine=bindfs,hang_timeout" "$src" "$mnt"
bad_mount "unknown option" -o "$S,engine=bindfs,no_such_option=1" "$src" "$mnt"
bad_mount "no engine" -o "$S" "$src" "$mnt"
bad_mount "missing MOUNTPOINT" -o "$S,engine=bindfs" "$src"
bad_mount "missing SOURCE and MOUNTPOINT" -o "$S,engine=bindfs"
bad_mount "unexpected argument" -o "$S,engine=bindfs" "$src" "$mnt" extra
bad_mount "cannot use mountpoint: $T/nope: No such file or directory" -o "$S,engine=bindfs" "$src" "$T/nope"
bad_mount "unknown flag '-x'" -x "$src" "$mnt"
bad_mount "unbalanced quote" -o "$S,engine_cmd=bindfs 'oops {source} {mnt}" "$src" "$mnt"
bad_mount "unknown placeholder {mount}" -o "$S,engine_cmd=bindfs {source} {mount}" "$src" "$mnt"
bad_mount "cannot read engine_env file: $T/missing.env: No such file or directory" -o "$S,engine=bindfs,engine_env=$T/missing.env" "$src" "$mnt"
printf 'GOOD=1\nthis line is wrong and holds hunter2\n' > "$T/bad.env"
bad_mount "line 2: want KEY=VALUE" -o "$S,engine=bindfs,engine_env=$T/bad.env" "$src" "$mnt"
grep -q hunter2 "$T/out" && fail "a bad env line was echoed"

# --- secrets: a password in SOURCE and in engine_env
secret=s3cr3t-Pa55
printf 'META_PASSWORD=%s\nexport ACCESS_KEY="%s-ak"\n' "$secret" "$secret" > "$T/engine.env"
cat > "$T/engine.sh" <<EOS
#!/bin/sh
env > "$T/engine-env.txt"
exec bindfs -f "$src" "\$1"
EOS
chmod +x "$T/engine.sh"
lz_mount "redis://admin:$secret@redis.example:6379/1" "$mnt" \
	"engine_cmd=$T/engine.sh {mnt},engine_env=$T/engine.env"
grep -qx hi "$mnt/f" || fail "read through the engine"
grep -qx "META_PASSWORD=$secret" "$T/engine-env.txt" || fail "engine did not get META_PASSWORD"
grep -qx "ACCESS_KEY=$secret-ak" "$T/engine-env.txt" || fail "engine did not get ACCESS_KEY"
ps -eo args | grep -F -- "$secret" | grep -v grep && fail "secret visible in ps"
grep -F -- "$secret" /proc/mounts && fail "secret visible in /proc/mounts"
grep -F "redis://admin:****@redis.example:6379/1" /proc/mounts >/dev/null || fail "masked fsname missing"
grep -rF -- "$secret" "$LZ_STATE"/*/lazarusfs.log && fail "secret in the log"
lz_ctl status "$mnt" | grep -F -- "$secret" && fail "secret in lazarusctl status"
echo "secrets stay out of ps, mounts, logs and status"
