"""A stage command whose node counts what it does: the node runs under
:func:`common.aio.run_until_signal`, each set of counters it reports becomes a line
``COMMAND: counts`` on stderr, and with ``--json`` the latest set (at the end, the final
counts) is the summary's ``counters``. One function, so the stages that report this way
(``preprocess``, ``infer``) stop, print and summarise alike: the summary holds the counts of
the last line on stderr.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from common.aio import Stop, run_until_signal
from common.summary import print_summary

#: what the node calls with its counters (periodically and once more at the end)
Report = Callable[[Counter], None]


def counters_text(counters: Counter) -> str:
    """Every counter as ``name value``, by name."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counters.items()))


def run_counting(
    command: str,
    serve: Callable[[Stop, Report], Coroutine[Any, Any, int]],
    *,
    text: Callable[[Counter], str] = counters_text,
    json_summary: bool = False,
) -> int:
    """Run ``serve(stop, report)`` to its end and return its exit code (the rules of
    :func:`~common.aio.run_until_signal`); ``text`` writes the counters for stderr."""
    last: list[Counter] = []  # the latest counters: at the end, the final ones

    def report(c: Counter) -> None:
        last[:] = [c]
        print(f"{command}: {text(c)}", file=sys.stderr, flush=True)

    code = run_until_signal(lambda stop: serve(stop, report))
    if json_summary:
        print_summary(command, code, {"counters": dict(last[0]) if last else {}})
    return code
