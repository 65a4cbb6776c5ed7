"""Stand-ins for systemd-run, for lazarusfs-csi --launcher in test_csi_pod.sh
(this machine runs no systemd).  Both start a command somewhere the death
of the caller's "pod" does not reach, and return its exit status:

  launcher.py agent SOCKET            the service manager: run it outside the
                                      pod; it runs what `service` asks for
  launcher.py service SOCKET -- CMD   like `systemd-run` (a service): the agent
                                      runs CMD with this process's stdin,
                                      stdout, stderr, environment and working
                                      directory, outside our PID namespace and
                                      cgroup; exits with CMD's status
  launcher.py scope CGROUP -- CMD     like `systemd-run --scope`: moves itself
                                      into the cgroup v2 directory CGROUP, then
                                      execs CMD (same pid, same namespaces)
"""
import array
import json
import os
import socket
import subprocess
import sys
import threading


def agent(path):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(path)
    srv.listen(16)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def serve(conn):
    fds = array.array("i")
    try:
        msg, anc, _, _ = conn.recvmsg(1 << 20, socket.CMSG_SPACE(3 * fds.itemsize))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        req = json.loads(msg)
        if len(fds) != 3:
            raise ValueError("expected 3 descriptors, got %d" % len(fds))
        p = subprocess.Popen(req["argv"], stdin=fds[0], stdout=fds[1], stderr=fds[2],
                             env=req["env"], cwd=req["cwd"], start_new_session=True)
        for fd in fds:
            os.close(fd)
        fds = []
        rc = p.wait()
        rc = 128 - rc if rc < 0 else rc
    except (OSError, ValueError, KeyError) as e:
        print("launcher agent: %s" % e, file=sys.stderr, flush=True)
        rc = 127
    finally:
        for fd in fds:
            os.close(fd)
    try:
        conn.send(b"%d" % rc)
    except OSError:
        pass	# the caller is gone (killed on the mount timeout)
    conn.close()


def service(path, argv):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    req = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()})
    s.sendmsg([req.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                array.array("i", [0, 1, 2]))])
    reply = s.recv(64)
    return int(reply) if reply else 127


def scope(cgroup, argv):
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
        f.write("%d\n" % os.getpid())
    os.execvp(argv[0], argv)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "agent":
        agent(sys.argv[2])
    if len(sys.argv) < 5 or sys.argv[1] not in ("service", "scope") or sys.argv[3] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    if sys.argv[1] == "service":
        return service(sys.argv[2], sys.argv[4:])
    return scope(sys.argv[2], sys.argv[4:])


if __name__ == "__main__":
    sys.exit(main())
