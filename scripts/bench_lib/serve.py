"""The archive server in its own process, steered over stdin.

Run by :class:`procs.ServerProcess` so the server's threads do not share a
GIL with the benchmark driver. Prints one JSON line with its URLs, then
answers one JSON line per command read from stdin:

``stats``               the server's counters (``ArchiveServer.stats``)
``reset``               zero the counters
``faults k=v [k=v...]`` set fault knobs (floats), e.g. ``faults stall_probability=0``
``quit``                stop and exit
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from empiarfs.archive_server import ArchiveServer, Faults


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root")
    parser.add_argument("--rate", type=float, default=0.0, help="bytes/s per connection")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--stall", type=float, default=0.0, help="probability a request stalls")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    faults = Faults(seed=args.seed, rate=args.rate, latency=args.latency,
                    stall_probability=args.stall)
    server = ArchiveServer(args.root, faults=faults, ftp=True).start()
    try:
        _say({"url": server.url, "api_url": server.api_url, "data_url": server.data_url,
              "ftp_url": server.ftp_url})
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "stats":
                _say(server.stats.snapshot())
            elif words[0] == "reset":
                server.stats.reset()
                _say({})
            elif words[0] == "faults":
                knobs = dict(w.split("=", 1) for w in words[1:])
                server.faults.set(**{k: float(v) for k, v in knobs.items()})
                _say({k: getattr(server.faults, k) for k in knobs})
            elif words[0] == "quit":
                break
            else:
                _say({"error": f"unknown command {words[0]!r}"})
    finally:
        server.stop()
    return 0


def _say(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
