#!/usr/bin/env python3
"""Connection churn for scripts/soak-bpf-iter.sh.

Short TCP connections between loopback addresses of the network namespace it runs in
(127.0.0.x and the IPv6 addresses given), both families plus IPv4 clients of a dual-stack
listener, each closed one of five ways: client first, server first, client RST
(SO_LINGER 0), server RST, or the client alone (the server's end stays in CLOSE_WAIT and
the client's orphan in FIN_WAIT2 until the slot is reused). The rate, the number of live
connections and the run time are bounded. One summary line on stdout at the end,
`key=value` pairs; progress on stderr every minute.
"""

import argparse
import errno
import random
import socket
import struct
import sys
import time

MODES = ("client_fin", "server_fin", "client_rst", "server_rst", "client_only")
LINGER_RST = struct.pack("ii", 1, 0)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def listener(family, addr, port, v6only):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
    s.bind((addr, port))
    s.listen(4096)
    # A connect that the kernel refused leaves nothing to accept: never block on it.
    s.settimeout(1.0)
    return s


def close_pair(pair, mode, stats):
    c, srv = pair
    if c is None:
        # The server end left open by "client_only" on an earlier visit.
        srv.close()
        return None
    if random.random() < 0.1:
        # Unread data makes the later close send an RST instead of a FIN.
        try:
            srv.send(b"x")
            c.send(b"y")
        except OSError:
            pass
    stats[mode] += 1
    if mode == "client_fin":
        c.close()
        srv.close()
    elif mode == "server_fin":
        srv.close()
        c.close()
    elif mode == "client_rst":
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        c.close()
        srv.close()
    elif mode == "server_rst":
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        srv.close()
        c.close()
    else:
        c.close()
        return (None, srv)
    return None


def connect(kind, lst, srcs, stats):
    family = socket.AF_INET if kind in ("v4", "mapped") else socket.AF_INET6
    c = socket.socket(family, socket.SOCK_STREAM)
    try:
        # The source port is picked at connect() from the whole 4-tuple, not at bind().
        c.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        c.bind((random.choice(srcs), 0))
        port = lst.getsockname()[1]
        c.connect((random.choice(srcs), port) if kind == "mapped" else lst.getsockname()[:2])
        srv, _ = lst.accept()
    except OSError as e:
        c.close()
        stats["errors"] += 1
        code = errno.errorcode.get(e.errno or 0, type(e).__name__)
        stats.setdefault("error_" + code, 0)
        stats["error_" + code] += 1
        return None
    stats[kind] += 1
    stats["connections"] += 1
    return (c, srv)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, required=True, help="seconds")
    ap.add_argument("--rate", type=int, default=2000, help="connections per second, at most")
    ap.add_argument("--live", type=int, default=256, help="open connections, at most")
    ap.add_argument("--port", type=int, default=20000, help="first listening port")
    ap.add_argument("--v4", nargs="+", required=True, help="IPv4 addresses to use")
    ap.add_argument("--v6", nargs="+", required=True, help="IPv6 addresses to use")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    if a.duration <= 0 or a.rate <= 0 or a.live <= 0:
        ap.error("--duration, --rate and --live must be positive")
    random.seed(a.seed)

    lists = {"v4": [], "v6": [], "mapped": []}
    for i in range(4):
        for addr in a.v4:
            lists["v4"].append(listener(socket.AF_INET, addr, a.port + i, True))
        for addr in a.v6:
            lists["v6"].append(listener(socket.AF_INET6, addr, a.port + i, True))
    # IPv4 clients of a dual-stack IPv6 listener: v4-mapped sockets on the IPv6 side.
    lists["mapped"].append(listener(socket.AF_INET6, "::", a.port + 4, False))
    srcs = {"v4": a.v4, "v6": a.v6, "mapped": a.v4}
    kinds = ["v4"] * 9 + ["v6"] * 9 + ["mapped"] * 2

    stats = {k: 0 for k in ("connections", "errors", "v4", "v6", "mapped") + MODES}
    pool = [None] * a.live
    start = time.monotonic()
    end = start + a.duration
    next_report = start + 60
    done = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        # Pace in 10 ms ticks: catch up to rate * elapsed, then sleep to the next tick.
        target = int((now - start) * a.rate)
        while done < target:
            slot = random.randrange(a.live)
            if pool[slot] is not None:
                pool[slot] = close_pair(pool[slot], random.choice(MODES), stats)
                if pool[slot] is not None:
                    continue
            done += 1
            kind = random.choice(kinds)
            pool[slot] = connect(kind, random.choice(lists[kind]), srcs[kind], stats)
        if now >= next_report:
            next_report += 60
            print(
                f"churn: {now - start:.0f} s, {stats['connections']} connections, "
                f"{stats['errors']} errors",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(max(0.0, 0.01 - (time.monotonic() - now)))
    elapsed = time.monotonic() - start
    for pair in pool:
        if pair is not None:
            for s in pair:
                if s is not None:
                    s.close()
    for group in lists.values():
        for s in group:
            s.close()
    stats["seconds"] = round(elapsed, 1)
    stats["rate"] = round(stats["connections"] / elapsed) if elapsed > 0 else 0
    print(" ".join(f"{k}={v}" for k, v in stats.items()), flush=True)


if __name__ == "__main__":
    main()
