"""The fuzz campaign (issue 12, item 5): run every target of ``tests/fuzz_targets.py`` for N
cases and print, per target, the cases run, the time and the crashes (0 or the first one found,
with its shrunk case on stderr).

    python bench/fuzz.py                      # 10,000 cases per target
    python bench/fuzz.py -n 500 --only bus_decode_mutated,ble_decode

Exit code 1 if any target crashed. The same targets run in every CI run with 200 cases
(``tests/test_fuzz.py``; ``M3SENSE_FUZZ_EXAMPLES`` sets the number, ``pytest -m fuzz`` selects them).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import fuzz_targets as ft


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--cases", type=int, default=10_000, help="cases per target (default 10000)")
    p.add_argument("--only", help="comma-separated target names (default: all)")
    p.add_argument("--seconds", type=float, help="stop a target after this long (its row says how many cases ran)")
    p.add_argument("--json", action="store_true", help="one JSON object per target instead of a table row")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)  # the readers' and decoders' own warnings, thousands of them
    names = args.only.split(",") if args.only else [t.name for t in ft.TARGETS]
    by_name = {t.name: t for t in ft.TARGETS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        p.error(f"unknown target(s) {unknown}; known: {', '.join(by_name)}")
    if not args.json:
        print(f"{'target':<22} {'cases':>7} {'crashes':>7} {'seconds':>8}  what")
    crashed = 0
    for name in names:
        target, counter, crashes, timed_out = by_name[name], [0], 0, False
        start = time.perf_counter()
        until = None if args.seconds is None else start + args.seconds
        try:
            ft.run(target, args.cases, counter, until=until)
        except ft.TimeUp:
            timed_out = True
        except Exception as exc:
            found = list(exc.exceptions) if isinstance(exc, BaseExceptionGroup) else [exc]
            timed_out = any(isinstance(e, ft.TimeUp) for e in found)
            crashes = sum(not isinstance(e, ft.TimeUp) for e in found)
            traceback.print_exc(file=sys.stderr)
        seconds = time.perf_counter() - start
        crashed += crashes
        note = f" (stopped after {args.seconds:g} s)" if timed_out else ""
        if args.json:
            print(
                json.dumps(
                    {
                        "target": name,
                        "cases": counter[0],
                        "crashes": crashes,
                        "seconds": round(seconds, 1),
                        "timed_out": timed_out,
                    }
                ),
                flush=True,
            )
        else:
            print(f"{name:<22} {counter[0]:>7} {crashes:>7} {seconds:>8.1f}  {target.what}{note}", flush=True)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
