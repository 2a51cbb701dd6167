"""A real Python client for rst-trace's application-error tests (the C one's twin, plus the
timeouts). Process name "rstt-pyapp" (prctl); one thread.

Usage: apperr_client.py MODE ADDR PORT
  recv         connect, send 256 bytes, print "sent", wait for a line on stdin, recv()
  splice       as recv, then splice() from a pipe into the socket (its fd is splice's third
               argument, fd_out)
  write        connect, read until EOF (CLOSE_WAIT), print "eof", wait for a line, send()
  connect      blocking connect()
  nbconnect    non-blocking connect_ex(), select() for writability, getsockopt(SO_ERROR)
  keepalive    connect, SO_KEEPALIVE with TCP_KEEPIDLE=1, TCP_KEEPINTVL=1, TCP_KEEPCNT=2,
               print "ready", wait for a line, recv()
  usertimeout  connect, TCP_USER_TIMEOUT=1000 ms, print "ready", wait for a line, send 100
               bytes, then recv() (blocks until the kernel gives up)
Prints "pid N" first and "fail CALL fd FD tid TID errno NAME" for the failing call.
"""
import ctypes
import errno
import os
import select
import socket
import sys
import threading

ctypes.CDLL(None).prctl(15, b"rstt-pyapp", 0, 0, 0)  # PR_SET_NAME


def say(s):
    print(s, flush=True)


def result(call, fd, err):
    name = errno.errorcode.get(err, "other") if err else "none"
    say(f"{'fail' if err else 'ok'} {call} fd {fd} tid {threading.get_native_id()} errno {name}")


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    say(f"pid {os.getpid()}")
    s = socket.socket(family, socket.SOCK_STREAM)
    if mode in ("recv", "splice", "write", "keepalive", "usertimeout"):
        s.connect((host, port))
    if mode == "recv":
        s.sendall(b"x" * 256)
        say("sent")
        sys.stdin.readline()
        call = "recvfrom"
        try:
            s.recv(100)
            err = 0
        except OSError as e:
            err = e.errno
    elif mode == "splice":
        s.sendall(b"x" * 256)
        say("sent")
        sys.stdin.readline()
        r, w = os.pipe()
        os.write(w, b"y" * 100)
        call = "splice"
        try:
            os.splice(r, s.fileno(), 100)
            err = 0
        except OSError as e:
            err = e.errno
    elif mode == "write":
        while s.recv(4096):
            pass
        say("eof")
        sys.stdin.readline()
        call = "sendto"
        try:
            s.send(b"x")
            err = 0
        except OSError as e:
            err = e.errno
    elif mode == "connect":
        call = "connect"
        try:
            s.connect((host, port))
            err = 0
        except OSError as e:
            err = e.errno
    elif mode == "nbconnect":
        s.setblocking(False)
        rc = s.connect_ex((host, port))
        assert rc == errno.EINPROGRESS, rc
        select.select([], [s], [], 5)
        call = "getsockopt"
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    elif mode == "keepalive":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)
        say("ready")
        sys.stdin.readline()
        call = "recvfrom"
        try:
            s.recv(100)
            err = 0
        except OSError as e:
            err = e.errno
    elif mode == "usertimeout":
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 1000)
        say("ready")
        sys.stdin.readline()
        s.send(b"x" * 100)
        call = "recvfrom"
        try:
            s.recv(100)
            err = 0
        except OSError as e:
            err = e.errno
    else:
        raise SystemExit(f"unknown mode {mode}")
    result(call, s.fileno(), err)


main()
