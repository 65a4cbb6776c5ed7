"""Reads one file through one descriptor across a pod's death, for
test_csi_pod.sh.

  pod_reader.py FILE REFERENCE FIRST GO survive|die

Opens FILE, reads its first FIRST bytes, prints "ready", then waits until a
line can be read from the FIFO GO (the test kills the pod meanwhile; this
process forks nothing and holds no other descriptor of FILE, so no FLUSH
reaches the proxy from here).  Then reads on through the same descriptor to
the end.  With "survive" every byte must match REFERENCE (the engine's own
copy, read directly); with "die" the read must fail with ENOTCONN, as a
mount whose proxy died does.  Prints one line with the verdict; exit 0 when
it is what was expected.
"""
import errno
import os
import sys

CHUNK = 1 << 20


def main():
    path, ref, first, go, want = sys.argv[1:6]
    first = int(first)
    fd = os.open(path, os.O_RDONLY)
    got = bytearray()
    while len(got) < first:
        b = os.read(fd, min(CHUNK, first - len(got)))
        if not b:
            break
        got += b
    print("ready %d" % len(got), flush=True)
    with open(go) as f:
        f.readline()
    try:
        while True:
            b = os.read(fd, CHUNK)
            if not b:
                break
            got += b
    except OSError as e:
        if want == "die" and e.errno == errno.ENOTCONN:
            print("ok: read after %d bytes failed with ENOTCONN" % len(got), flush=True)
            return 0
        print("read failed after %d bytes: %s" % (len(got), e), flush=True)
        return 1
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    if want == "die":
        print("read %d bytes although the proxy is dead" % len(got), flush=True)
        return 1
    with open(ref, "rb") as f:
        expect = f.read()
    if got != expect:
        at = next((i for i in range(min(len(got), len(expect))) if got[i] != expect[i]),
                  min(len(got), len(expect)))
        print("mismatch: %d bytes read, %d expected, first difference at %d" %
              (len(got), len(expect), at), flush=True)
        return 1
    print("ok: all %d bytes match" % len(got), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
