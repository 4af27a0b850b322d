#!/usr/bin/env python3
"""DNS lookups in the guest: hostResolver against slirp's own DNS, in one run.

On the built-in image (one instance), a script in the guest times single
UDP queries, one at a time, interleaved:

* hostResolver: to the guest agent's relay on 127.0.0.1:53 (what the
  guest's resolv.conf names first), to the host agent's server, answered
  by the host's resolver (getaddrinfo);
* baseline: the same query to slirp's DNS at 192.168.5.3:53 (QEMU's
  built-in forwarder to the host's nameservers; no relay on this image),
  which is what the guest used before hostResolver;
* hostResolver's own name (host.roost.internal), answered without a
  lookup on the host: the floor of the path itself.

The name looked up is one the host resolves (`--name`, default
deb.debian.org: this machine's registry, so it resolves here); the host's
resolver may cache it, as slirp's upstream may: both paths get it warm.

    .venv/bin/python bench/dns.py [--queries 200] [--name NAME]   # prints JSON
"""

from __future__ import annotations

import argparse
import json
import statistics

from common import host_facts, roost, scratch_home

GUEST = r'''
import json, random, socket, struct, sys, time
name, n = sys.argv[1], int(sys.argv[2])
def q(name):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0) + labels \
        + b"\0" + struct.pack("!HH", 1, 1)
def once(server, name):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    pkt = q(name)
    t = time.perf_counter()
    s.sendto(pkt, (server, 53))
    try:
        while s.recv(4096)[:2] != pkt[:2]:
            pass
    except socket.timeout:
        return None  # lost: counted, not timed
    finally:
        s.close()
    return time.perf_counter() - t
paths = {"hostResolver": ("127.0.0.1", name), "slirp": ("192.168.5.3", name),
         "hostResolverOwnName": ("127.0.0.1", "host.roost.internal")}
for server, qname in paths.values():
    once(server, qname)  # warm: caches on each path, the relay's first thread
out = {k: [] for k in paths}
lost = {k: 0 for k in paths}
for _ in range(n):
    for k, (server, qname) in paths.items():
        took = once(server, qname)
        if took is None:
            lost[k] += 1
        else:
            out[k].append(took)
print(json.dumps({"times": out, "lost": lost}))
'''


def ms(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"median": round(statistics.median(values) * 1000, 2),
            "p90": round(values[int(len(values) * 0.9)] * 1000, 2),
            "min": round(values[0] * 1000, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--name", default="deb.debian.org")
    args = parser.parse_args()
    facts = host_facts()
    with scratch_home() as home:
        roost(home, "create", "dns", "--memory", "512MiB")
        roost(home, "start", "dns", "--timeout", "900")
        out = json.loads(roost(home, "shell", "dns", "--", "python3", "-", args.name,
                               str(args.queries), input=GUEST))
    result = {k: {**ms(v), "lost": out["lost"][k]} for k, v in out["times"].items()}
    print(json.dumps({
        **facts, "image": "built-in", "queries_each": args.queries, "name": args.name,
        "lookup_ms": result,
        "ratio_hostResolver_over_slirp": round(result["hostResolver"]["median"]
                                               / result["slirp"]["median"], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
