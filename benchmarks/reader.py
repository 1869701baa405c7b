"""A socket client in its own process that counts the lines it receives.

``python benchmarks/reader.py SOCKET VERSION`` connects, subscribes (a ``hello``
of protocol VERSION), reads as fast as it can until
the server closes the connection, and prints one JSON object: ``series``, a list
of ``[monotonic_time, lines_so_far]`` taken at most every 20 ms, so the parent
can count what arrived in any time window (CLOCK_MONOTONIC is shared by every
process). It decodes nothing: it measures what the server delivers, not what a
client does with it. Stdlib only, so it starts fast.
"""

from __future__ import annotations

import json
import socket
import sys
import time

SAMPLE_EVERY_S = 0.02


def main(argv: list[str]) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(argv[0])
    sock.sendall(b'{"type":"hello","version":%d}\n' % int(argv[1]))  # subscribe
    lines = 0
    series: list[list[float]] = [[time.monotonic(), 0]]
    next_sample = 0.0
    buf = bytearray(1 << 20)
    while True:
        try:
            n = sock.recv_into(buf)
        except OSError:
            break
        if not n:
            break
        lines += buf.count(b"\n", 0, n)
        now = time.monotonic()
        if now >= next_sample:
            series.append([now, lines])
            next_sample = now + SAMPLE_EVERY_S
    series.append([time.monotonic(), lines])
    json.dump({"series": series}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
