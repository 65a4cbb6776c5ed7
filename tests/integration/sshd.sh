# sshd.sh: throwaway OpenSSH server on 127.0.0.1 for tests and benchmarks
# (sshfs engine).  Source it from bash; needs root and /usr/sbin/sshd.
#
#   . "$SRC_DIR/tests/integration/sshd.sh"
#   sshd_start "$T/sshd" || exit 1     # DIR: keys, config, log, pid file
#   trap 'sshd_stop' EXIT              # (add it to your own cleanup)
#   sshfs -f root@127.0.0.1:/srv/data /mnt/x $(sshfs_opts) &
#   sshfs root@127.0.0.1:/srv/data /mnt/x -o "$(sshfs_o_list)"   # same, one -o
#   ssh $(ssh_opts) root@127.0.0.1 true
#
# sshd_start exports SSHD_PORT, SSHD_PIDFILE, SSH_KEY (client private key)
# and SSHD_DIR, and returns only once a real key login works.  DIR must not
# contain whitespace (the option strings are meant to be word-split).
# Nothing here prints the keys; sshd logs to DIR/sshd.log.

# Options for ssh to log in to that server non-interactively.
ssh_opts() {
	echo "-p $SSHD_PORT -o IdentityFile=$SSH_KEY -o IdentitiesOnly=yes" \
		"-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null" \
		"-o BatchMode=yes -o LogLevel=ERROR"
}

# Options for sshfs: it passes ssh_config options given with -o on to ssh.
sshfs_opts() {
	ssh_opts
}

# The same as one comma-separated -o list (e.g. for mount -o or engine_cmd).
sshfs_o_list() {
	echo "port=$SSHD_PORT,IdentityFile=$SSH_KEY,IdentitiesOnly=yes" \
		",StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null" \
		",BatchMode=yes,LogLevel=ERROR" | tr -d ' '
}

# Prints a TCP port on 127.0.0.1 that is free right now.
sshd_free_port() {
	/usr/bin/python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

sshd_start() {
	local dir=${1:?usage: sshd_start DIR} port i

	mkdir -p "$dir" && dir=$(cd "$dir" && pwd) || return 1
	# privilege separation directory; sshd refuses to start without it
	[ -d /run/sshd ] || mkdir -m 0755 /run/sshd || return 1
	rm -f "$dir/host_key" "$dir/host_key.pub" "$dir/client_key" \
		"$dir/client_key.pub" "$dir/sshd.pid"
	ssh-keygen -q -N '' -t ed25519 -C lazarusfs-test-host -f "$dir/host_key" &&
		ssh-keygen -q -N '' -t ed25519 -C lazarusfs-test-client \
			-f "$dir/client_key" &&
		cp "$dir/client_key.pub" "$dir/authorized_keys" || return 1

	SSHD_DIR=$dir
	SSHD_PIDFILE=$dir/sshd.pid
	SSH_KEY=$dir/client_key
	export SSHD_DIR SSHD_PIDFILE SSH_KEY

	# the free port may be taken again before sshd binds it: retry
	for _ in 1 2 3 4 5; do
		port=$(sshd_free_port) || return 1
		cat >"$dir/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
Subsystem sftp internal-sftp
LogLevel INFO
EOF
		/usr/sbin/sshd -t -f "$dir/sshd_config" 2>"$dir/sshd.log" || {
			echo "sshd_start: invalid sshd config:" >&2
			cat "$dir/sshd.log" >&2
			return 1
		}
		rm -f "$dir/sshd.log"
		# sshd daemonizes first, then binds, then writes the pid file, so
		# a taken port shows only in the log
		/usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log" || break
		for ((i = 0; i < 100; i++)); do
			[ -s "$SSHD_PIDFILE" ] && break 2
			grep -qs 'Cannot bind any address' "$dir/sshd.log" && break
			sleep 0.1
		done
	done
	if ! [ -s "$SSHD_PIDFILE" ]; then
		echo "sshd_start: sshd failed to start:" >&2
		tail -n 5 "$dir/sshd.log" >&2
		return 1
	fi
	SSHD_PORT=$port
	export SSHD_PORT

	for ((i = 0; i < 50; i++)); do
		# shellcheck disable=SC2046 # the options are meant to be split
		ssh $(ssh_opts) root@127.0.0.1 true </dev/null 2>/dev/null && return 0
		sleep 0.1
	done
	echo "sshd_start: no key login to sshd on 127.0.0.1:$SSHD_PORT:" >&2
	tail -n 5 "$dir/sshd.log" >&2
	sshd_stop
	return 1
}

# Prints pid and all its descendants.
sshd_pid_tree() {
	local c

	echo "$1"
	for c in $(pgrep -P "$1"); do
		sshd_pid_tree "$c"
	done
}

# Stops the server and its sessions (an sshfs still mounted on it then fails
# with EIO/ENOTCONN; unmount first for a clean stop).
sshd_stop() {
	local pids p i alive

	[ -n "${SSHD_PIDFILE:-}" ] && [ -s "$SSHD_PIDFILE" ] || return 0
	pids=$(sshd_pid_tree "$(cat "$SSHD_PIDFILE")")
	for p in $pids; do
		kill "$p" 2>/dev/null || true
	done
	for ((i = 0; i < 50; i++)); do
		alive=
		for p in $pids; do # zombies count as gone
			case $(ps -o stat= -p "$p") in "" | Z*) ;; *) alive=1 ;; esac
		done
		[ -z "$alive" ] && break
		sleep 0.1
	done
	for p in $pids; do
		kill -9 "$p" 2>/dev/null || true
	done
	rm -f "$SSHD_PIDFILE"
	return 0
}
