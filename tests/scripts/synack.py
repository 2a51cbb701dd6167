#!/usr/bin/python3
"""Answers the first SYN to PORT on lo with a crafted SYN-ACK, for rst-trace's tests.

usage: synack.py PORT bad_ack|bad_tsecr

bad_ack:   the SYN-ACK acknowledges a sequence number the client never sent
           (the client answers RST, reason TCP_INVALID_ACK_SEQUENCE)
bad_tsecr: valid ACK, but a timestamp echo from the future
           (the client answers RST, reason TCP_RFC7323_PAWS)
Run it inside the test's network namespace, with the kernel's own answer to the SYN dropped.
"""
import sys

from scapy.all import IP, TCP, L3RawSocket, conf, send, sniff

port, mode = int(sys.argv[1]), sys.argv[2]
conf.verb = 0
# On loopback, send through a raw IP socket (scapy's default link-layer socket does not loop back).
conf.L3socket = L3RawSocket


def is_syn(p):
    return TCP in p and p[TCP].dport == port and p[TCP].flags == "S"


pkts = sniff(
    iface="lo",
    lfilter=is_syn,
    count=1,
    timeout=15,
    started_callback=lambda: print("ready", flush=True),
)
if not pkts:
    print("no SYN", flush=True)
    sys.exit(1)
syn = pkts[0]
ack = syn[TCP].seq + 1
opts = []
tsval = 0
for name, value in syn[TCP].options:
    if name == "Timestamp":
        tsval = value[0]
if mode == "bad_ack":
    ack = (ack + 100000) & 0xFFFFFFFF
    opts = [("Timestamp", (12345, tsval))] if tsval else []
else:
    opts = [("Timestamp", (12345, (tsval + 100000000) & 0xFFFFFFFF))]
reply = IP(src=syn[IP].dst, dst=syn[IP].src) / TCP(
    sport=port, dport=syn[TCP].sport, flags="SA", seq=777000, ack=ack, options=opts
)
send(reply)
print("sent", flush=True)
