#!/usr/bin/python3
"""Holds many idle TCP connections, for rst-trace's owner-map tests.

usage: crowd.py PORT PAIRS

Connects PAIRS clients to 127.0.0.1:PORT and accepts each, prints "ready", then on a line from
stdin aborts the accepted end of the first pair (SO_LINGER 0, close: the kernel sends RST, which
the first client receives without any call of its own), prints "aborted CLIENT_PORT", and exits
at the end of stdin. Run it inside the test's network namespace.
"""
import os
import resource
import socket
import struct
import sys

port, pairs = int(sys.argv[1]), int(sys.argv[2])
# On one CPU: the kernel's LRU keeps per-CPU lists, so the owner map fills in one order.
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
need = 2 * pairs + 64
resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
srv = socket.socket()
srv.bind(("127.0.0.1", port))
srv.listen(1024)
held = []
for _ in range(pairs):
    c = socket.create_connection(("127.0.0.1", port))
    a, _ = srv.accept()
    held.append((c, a))
print("ready", flush=True)
sys.stdin.readline()
c, a = held[0]
a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
a.close()
print("aborted", c.getsockname()[1], flush=True)
sys.stdin.read()
