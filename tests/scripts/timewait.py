#!/usr/bin/python3
"""Leaves many TCP connections in TIME_WAIT, for rst-trace's TIME_WAIT map test.

usage: timewait.py PORT COUNT

Connects COUNT clients to 127.0.0.1:PORT one after the other; each client closes first, so its
end waits in TIME_WAIT (60 s) once the server's FIN arrives. Prints "ready COUNT" and exits.
Each client binds its port before connecting: bind() picks a port no TIME_WAIT socket holds,
where connect() alone may take over an older TIME_WAIT socket of the same flow on loopback
(net.ipv4.tcp_tw_reuse=2, the default), ending it.
"""
import socket
import sys

port, count = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(128)
for _ in range(count):
    c = socket.socket()
    c.bind(("127.0.0.1", 0))
    c.connect(("127.0.0.1", port))
    a, _ = srv.accept()
    c.close()
    # The client's FIN read (EOF), then the server's own FIN: the client goes to TIME_WAIT.
    a.recv(1)
    a.close()
srv.close()
print("ready", count, flush=True)
