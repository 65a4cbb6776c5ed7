# s3rver.sh: throwaway S3 server (s3rver 3.x, npm) on 127.0.0.1 for tests
# and benchmarks (s3fs engine, rclone's S3 backend).  Source it from bash.
#
#   . "$SRC_DIR/tests/integration/s3rver.sh"
#   s3rver_start "$T/s3" BUCKET || exit 1   # DIR: objects, log, credentials
#   trap 's3rver_stop' EXIT                 # (add it to your own cleanup)
#   s3rver_env_run s3fs BUCKET /mnt/x -f $(s3rver_s3fs_opts)
#   s3rver_stop; s3rver_start "$T/s3" BUCKET  # an outage: same port, same data
#   cmp file "$(s3rver_object dir/name)"      # the bytes the server stored
#
# s3rver_start exports S3RVER_PORT, S3RVER_URL (http://127.0.0.1:PORT),
# S3RVER_PID, S3RVER_DIR, S3_BUCKET, and S3_ENV: a KEY=VALUE file (mode
# 0600, lazarusfs's engine_env format) with AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY.  s3rver knows one account only (S3RVER:S3RVER);
# it runs with --allow-mismatched-signatures, so that the secret can be a
# random string per server (S3_SECRET), which tests grep for to prove it
# leaks nowhere.  Requests with another access key id are still refused.
# The first start picks a free port (s3rver -p 0); a later start in the
# same shell takes the same port and data again.  DIR must not contain
# whitespace.  s3rver_available says whether s3rver 3.x is installed.

s3rver_available() {
	case $(s3rver --version 2>/dev/null) in 3.*) return 0 ;; esac
	return 1
}

s3rver_start() {
	local dir=${1:?usage: s3rver_start DIR BUCKET} bucket=${2:?usage: s3rver_start DIR BUCKET}
	local port=0 i

	mkdir -p "$dir/data" && dir=$(cd "$dir" && pwd) || return 1
	if [ "${S3RVER_DIR:-}" = "$dir" ] && [ -n "${S3RVER_PORT:-}" ]; then
		port=$S3RVER_PORT       # a restart: the clients know this port
	else
		S3_SECRET=lzsecret-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
		(umask 077 && printf 'AWS_ACCESS_KEY_ID=S3RVER\nAWS_SECRET_ACCESS_KEY=%s\n' \
			"$S3_SECRET" >"$dir/s3.env") || return 1
	fi
	S3RVER_DIR=$dir
	S3_BUCKET=$bucket
	S3_ENV=$dir/s3.env
	export S3RVER_DIR S3_BUCKET S3_ENV S3_SECRET
	: >"$dir/s3rver.log"
	# not a child of this shell, so that a test's plain `wait` does not
	# wait for it; its own session, away from the test's signals
	rm -f "$dir/s3rver.pid"
	(setsid s3rver -d "$dir/data" -a 127.0.0.1 -p "$port" --configure-bucket "$bucket" \
		--allow-mismatched-signatures --silent </dev/null >>"$dir/s3rver.log" 2>&1 &
		echo $! >"$dir/s3rver.pid")
	S3RVER_PID=$(cat "$dir/s3rver.pid")
	export S3RVER_PID
	# it prints the address once it listens (the bucket exists by then)
	for ((i = 0; i < 150; i++)); do
		port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$dir/s3rver.log")
		[ -n "$port" ] && break
		kill -0 "$S3RVER_PID" 2>/dev/null || break
		sleep 0.1
	done
	if [ -z "$port" ]; then
		echo "s3rver_start: s3rver did not start:" >&2
		tail -n 5 "$dir/s3rver.log" >&2
		s3rver_stop
		return 1
	fi
	S3RVER_PORT=$port
	S3RVER_URL=http://127.0.0.1:$port
	export S3RVER_PORT S3RVER_URL
}

# Stops the server (data stays); an s3fs mounted on it then retries.
s3rver_stop() {
	local i

	[ -n "${S3RVER_PID:-}" ] || return 0
	kill "$S3RVER_PID" 2>/dev/null
	for ((i = 0; i < 50; i++)); do
		kill -0 "$S3RVER_PID" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$S3RVER_PID" 2>/dev/null
	S3RVER_PID=
	return 0
}

# s3fs's words for this server (path-style requests to S3RVER_URL).
s3rver_s3fs_opts() {
	echo "-o url=$S3RVER_URL -o use_path_request_style"
}

# s3rver_env_run CMD...: CMD with the credentials in its environment (not
# in any argv).
s3rver_env_run() {
	(
		set -a
		. "$S3_ENV"
		exec "$@"
	)
}

# s3rver_object KEY: the file in which s3rver keeps the bytes of KEY.
s3rver_object() {
	echo "$S3RVER_DIR/data/$S3_BUCKET/$1._S3rver_object"
}
