#!/usr/bin/python3
"""Injects an RST into a connection from the middle of the path, for rst-trace's tests.

usage: inject_rst.py PORT

Run inside the router's network namespace: it waits for the server (source port PORT) to send
data towards the client, then sends the client an RST that claims to come from the server, with
exactly the sequence number the client expects next (RFC 5961 accepts no other).
"""
import sys

from scapy.all import IP, TCP, Raw, conf, get_if_list, send, sniff

port = int(sys.argv[1])
conf.verb = 0


def is_data(p):
    return TCP in p and p[TCP].sport == port and Raw in p and len(p[Raw].load) > 0


pkts = sniff(
    iface=[i for i in get_if_list() if i != "lo"],
    lfilter=is_data, count=1, timeout=15, started_callback=lambda: print("ready", flush=True)
)
if not pkts:
    print("no data seen", flush=True)
    sys.exit(1)
p = pkts[0]
seq = (p[TCP].seq + len(p[Raw].load)) & 0xFFFFFFFF
send(IP(src=p[IP].src, dst=p[IP].dst, ttl=64) / TCP(sport=p[TCP].sport, dport=p[TCP].dport, flags="R", seq=seq))
print("injected", flush=True)
