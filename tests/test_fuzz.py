"""Fuzzing as a test (issue 12, item 5): every target of ``tests/fuzz_targets.py`` runs
``M3SENSE_FUZZ_EXAMPLES`` generated cases (40 by default, in every run) and must not crash.
The campaign: ``M3SENSE_FUZZ_EXAMPLES=10000 pytest -m fuzz`` or ``python bench/fuzz.py``."""

from __future__ import annotations

import pytest

from tests import fuzz_targets as ft

# the suite's 300 s per test holds for the default; a campaign gets a second per case
pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(max(300, ft.EXAMPLES))]


@pytest.mark.parametrize("target", ft.TARGETS, ids=lambda t: t.name)
def test_no_crash(target: ft.Target) -> None:
    ft.run(target)
