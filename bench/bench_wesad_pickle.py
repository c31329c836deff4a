"""How long a full-size WESAD ``SX.pkl`` takes to read, and the memory it takes.

The pickle is synthetic with S2's published shapes (6079 s: chest 700 Hz x 8 channels, the 700 Hz
labels, wrist ACC/BVP/EDA/TEMP), written in Python 2's opcodes by the test fixture writer, then
read by ``wesad:PATH/S2.pkl`` (the restricted unpickler and every check). Peak RSS is the process's
(numbers include writing the file, which happens first).

    .venv/bin/python bench/bench_wesad_pickle.py
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replay.e4csv import read_source
from tests.dataset_fixtures import write_py2_pickle

SECONDS = 6079  # S2


def main() -> None:
    rng = np.random.default_rng(0)
    n = SECONDS * 700
    label = np.zeros(n, dtype=np.int32)
    label[600 * 700 : 1800 * 700] = 1
    label[2400 * 700 : 3000 * 700] = 2
    data = {
        "signal": {
            "chest": {
                "ACC": rng.normal(0, 0.1, (n, 3)),
                "ECG": rng.normal(0, 1, (n, 1)),
                "EMG": rng.normal(0, 1, (n, 1)),
                "EDA": rng.normal(5, 1, (n, 1)),
                "Temp": rng.normal(33, 0.1, (n, 1)),
                "Resp": rng.normal(0, 1, (n, 1)),
            },
            "wrist": {
                "ACC": np.round(rng.normal(0, 20, (SECONDS * 32, 3))),
                "BVP": rng.normal(0, 50, (SECONDS * 64, 1)),
                "EDA": rng.uniform(0.1, 5, (SECONDS * 4, 1)),
                "TEMP": rng.normal(33, 0.5, (SECONDS * 4, 1)),
            },
        },
        "label": label,
        "subject": "S2",
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = write_py2_pickle(data, Path(tmp) / "S2.pkl")
        del data
        size = path.stat().st_size
        t = time.perf_counter()
        rec = read_source(f"wesad:{path}")[0]
        took = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"SX.pkl {size / 2**20:.0f} MiB ({SECONDS} s): read in {took:.1f} s, {len(rec.labels)} label intervals, "
        f"peak RSS {peak:.0f} MiB"
    )


if __name__ == "__main__":
    main()
