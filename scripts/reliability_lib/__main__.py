"""``python -m reliability_lib [--minutes M] [--files N] [--readers R] [--out PATH]``."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time

from empiarfs.sample import make_sample
from empiarfs.server import ArchiveServer

from . import hostile, load, report

log = logging.getLogger("soak")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=4.0, help="length of the load phase")
    parser.add_argument("--files", type=int, default=1000, help="small files in the sample")
    parser.add_argument("--readers", type=int, default=64)
    parser.add_argument("--out", default="docs/reliability.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = tempfile.mkdtemp(prefix="empiarfs-soak-")
    os.chmod(work, 0o755)
    began = time.time()
    try:
        root = os.path.join(work, "sample")
        manifest = make_sample(root, seed=0, many_files=args.files)
        with ArchiveServer(root, ftp=True) as server:
            log.info("load phase: %d readers for %.1f min", args.readers, args.minutes)
            figures = load.run(server, root, manifest, work, minutes=args.minutes, readers=args.readers)
            log.info("hostile inputs")
            table = hostile.run(server, work)
        text = report.render(figures, table, minutes=args.minutes, files=args.files,
                             readers=args.readers, took=time.time() - began)
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
        log.info("wrote %s", args.out)
        return 0 if report.passed(figures, table) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
