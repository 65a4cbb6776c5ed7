# shellcheck shell=bash
# bench/lib/sshd.sh: a throwaway sshd on 127.0.0.1 for the benchmarks.
# Sourceable. Same interface as tests/integration/sshd.sh, which bench/run
# prefers when it exists:
#   sshd_start DIR   start sshd for root with a fresh key under DIR;
#                    exports SSHD_PORT, SSH_KEY (and SSHD_PID)
#   sshd_stop        stop it (only the sshd this file started)
#   sshfs_opts       print "-o opt -o opt ..." for sshfs/ssh to reach it
# Only 127.0.0.1 is used (or $SSHD_ADDR, which bench/run sets to an address
# inside its private network namespace for --netem).

sshd_start() {
	local dir=$1 port i
	mkdir -p "$dir" /run/sshd
	chmod 700 "$dir"
	rm -f "$dir/hostkey" "$dir/hostkey.pub" "$dir/id" "$dir/id.pub"
	ssh-keygen -q -t ed25519 -N '' -f "$dir/hostkey" </dev/null >/dev/null || return 1
	ssh-keygen -q -t ed25519 -N '' -f "$dir/id" </dev/null >/dev/null || return 1
	cp "$dir/id.pub" "$dir/authorized_keys"
	chmod 600 "$dir/authorized_keys"
	for i in 1 2 3 4 5 6 7 8; do
		port=$((20000 + RANDOM % 20000))
		cat >"$dir/sshd_config" <<-CONF
			Port $port
			ListenAddress ${SSHD_ADDR:-127.0.0.1}
			HostKey $dir/hostkey
			PidFile $dir/sshd.pid
			AuthorizedKeysFile $dir/authorized_keys
			PermitRootLogin prohibit-password
			PasswordAuthentication no
			KbdInteractiveAuthentication no
			UsePAM no
			StrictModes no
			Subsystem sftp internal-sftp
			LogLevel ERROR
		CONF
		${SSHD_NETNS_EXEC:-} /usr/sbin/sshd -D -e -f "$dir/sshd_config" \
			>>"$dir/sshd.log" 2>&1 &
		SSHD_PID=$!
		local t
		for t in $(seq 50); do
			if ! kill -0 "$SSHD_PID" 2>/dev/null; then
				break
			fi
			if ${SSHD_NETNS_EXEC:-} ssh -q -i "$dir/id" -p "$port" \
				-o BatchMode=yes -o StrictHostKeyChecking=no \
				-o UserKnownHostsFile=/dev/null -o ConnectTimeout=2 \
				"root@${SSHD_ADDR:-127.0.0.1}" true </dev/null 2>/dev/null; then
				SSHD_PORT=$port SSH_KEY=$dir/id
				export SSHD_PORT SSH_KEY SSHD_PID
				return 0
			fi
			sleep 0.1
		done
		kill "$SSHD_PID" 2>/dev/null
		wait "$SSHD_PID" 2>/dev/null
	done
	echo "sshd_start: could not start sshd (see $dir/sshd.log)" >&2
	return 1
}

sshd_stop() {
	if [ -n "${SSHD_PID:-}" ]; then
		kill "$SSHD_PID" 2>/dev/null
		wait "$SSHD_PID" 2>/dev/null
		SSHD_PID=
	fi
}

sshfs_opts() {
	echo "-o IdentityFile=$SSH_KEY -o Port=$SSHD_PORT -o StrictHostKeyChecking=no" \
		"-o UserKnownHostsFile=/dev/null -o BatchMode=yes"
}
