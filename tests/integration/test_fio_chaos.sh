#!/bin/bash
# fio with --verify=crc32c (a writer and a reader) on lazarusfs while the
# proxy and the engine are killed in turn every 3 s for 60 s, over bindfs
# and over sshfs.  fio must report zero errors, every engine kill must end
# in a recovery and every proxy kill in a takeover.  The measuring and
# reporting is bench/chaos's; this test holds it to zero.
. "$(dirname "$0")/lib.sh"
command -v fio >/dev/null || fail "fio is not installed"
command -v jq >/dev/null || fail "jq is not installed"

for engine in bindfs sshfs; do
	echo "== $engine"
	"$SRC_DIR/bench/chaos" --engine "$engine" --kill both --duration 60 --interval 3 --size 64 \
		--lazarusfs "$LAZARUSFS" --lazarusctl "$LAZARUSCTL" --workdir "$T/chaos-$engine" \
		--md "$T/chaos-$engine.md" || fail "$engine: bench/chaos failed"
	cat "$T/chaos-$engine.md"
	errs=$(sed -n 's/^| application errors[^|]*| \([0-9]*\); \([0-9]*\) |$/\1 \2/p' "$T/chaos-$engine.md")
	[ "$errs" = "0 0" ] || fail "$engine: fio saw errors: '$errs'"
	kills=$(sed -n 's/^| engine kills | \([0-9]*\) |$/\1/p' "$T/chaos-$engine.md")
	[ "${kills:-0}" -ge 5 ] || fail "$engine: only ${kills:-0} engine kills in 60 s"
	pkills=$(sed -n 's/^| proxy kills | \([0-9]*\) |$/\1/p' "$T/chaos-$engine.md")
	[ "${pkills:-0}" -ge 5 ] || fail "$engine: only ${pkills:-0} proxy kills in 60 s"
done
echo "fio chaos passed"
