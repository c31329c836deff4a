"""Real E4 data (WESAD S2): the offline path over a whole session, labels and quality."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from preprocess import recording_windows
from replay import read_e4_export
from tests.conftest import WESAD, needs

S2 = WESAD / "S2"
pytestmark = needs(S2.is_dir(), reason=f"WESAD E4 data not found at {S2}")


@pytest.mark.slow
def test_wesad_s2_windows() -> None:
    rec = read_e4_export(S2)
    windows = recording_windows(rec)
    assert len(windows) == pytest.approx(rec.duration_s / 5.0, abs=4)
    starts = np.array([w.t_start_s for w in windows])
    assert (np.diff(starts) == 5.0).all()  # one grid, no holes: the session has no gaps
    labels = Counter(w.labels["stress"] for w in windows)
    assert labels["baseline"] > 100 and labels["stress"] > 50 and labels["amusement"] > 20
    assert set(labels) == {None, "baseline", "stress", "amusement"}  # meditation is not a class
    # the E4 starts TEMP with a ~382 degC sentinel (physiology.md): the first window is not trusted
    assert windows[0].quality.off_wrist and not windows[0].quality.usable
    assert sum(w.quality.usable for w in windows) > 0.95 * len(windows)
    for w in windows:
        assert all(np.isfinite(a).all() for a in w.signals.values())
    eda = {
        lab: np.median([np.median(w.signals["eda"]) for w in windows if w.labels["stress"] == lab])
        for lab in ("baseline", "stress")
    }
    assert eda["stress"] > 2 * eda["baseline"]  # S2's EDA responds to the TSST
