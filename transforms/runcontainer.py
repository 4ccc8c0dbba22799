#!/usr/bin/env python3
"""runcontainer: run a pcontainer ``--exec`` string in the work dir and report how it went.

Runs inside the image: standard library only, nothing from hpcaf. The exec
string runs under ``/bin/sh -c`` with the output streamed to stdout (which
the pilot keeps as the job log); ``jobReport.json`` records the exit code and
timing, as PanDA transforms do.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exec", dest="exec_string", required=True, help="the command to run")
    args = parser.parse_args(argv)
    started = time.time()
    print(f"=== runcontainer: {args.exec_string}", flush=True)
    try:
        code = subprocess.call(["/bin/sh", "-c", args.exec_string])
    except OSError as exc:
        print(f"runcontainer: cannot start /bin/sh: {exc}", file=sys.stderr)
        code = 127
    ended = time.time()
    report = {
        "exitCode": code,
        "startTime": started,
        "endTime": ended,
        "wallTime": round(ended - started, 3),
    }
    with open("jobReport.json", "w") as fh:
        json.dump(report, fh)
    print(f"=== runcontainer: exit code {code} after {ended - started:.2f}s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
