"""The crashes the fuzz targets found, each kept as a fixed case (issue 12, item 5): what the
fuzzer found once must stay fixed whether or not a later random run happens upon it again."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest

from common.errors import DataError
from replay.e4csv import read_source

EDA = "1600000000.000000\n4.000000\n1.0\n2.0\n3.0\n4.0\n5.0\n6.0\n7.0\n8.0\n"


def _zip(path: Path, files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_zip_member_with_a_damaged_local_header_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "S1_E4_Data.zip"
    data = bytearray(_zip(path, {"EDA.csv": EDA}))
    data[0] = 0  # the member's local header signature (once zipfile.BadZipFile from read_source)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"S1_E4_Data\.zip!EDA\.csv: damaged zip member"):
        read_source(path)


def test_zip_needing_a_newer_zip_version_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "S1_E4_Data.zip"
    data = bytearray(_zip(path, {"EDA.csv": EDA}))
    central = data.rindex(b"PK\x01\x02")
    struct.pack_into("<B", data, central + 6, 64)  # "needs version 6.4" (once NotImplementedError)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="not a readable zip"):
        read_source(path)


@pytest.mark.parametrize("start, end", [(-1e12, 1600000001.0), (1600000000.0 + 1e6, 1600000000.0 + 2e6)])
def test_label_interval_outside_the_recording_is_refused_with_its_line(
    tmp_path: Path, start: float, end: float
) -> None:
    """A label before 1970 once passed the reader and was dropped by the bus as a bad time; one
    days after the recording would have held a real-time replay for as long."""
    folder = tmp_path / "S1"
    folder.mkdir()
    (folder / "EDA.csv").write_text(EDA)
    (folder / "labels.csv").write_text(f"start,end,task,label\n\n{start},{end},stress,stress\n")
    with pytest.raises(DataError, match=r"labels\.csv:3: interval starting at .* is outside the recording"):
        read_source(folder)


def test_a_chunk_from_long_ago_before_the_first_window_is_a_clock_jump_not_terabytes() -> None:
    """Found by the preprocess target: before any window was out, an EDA chunk stamped t=0
    beside today's data made the windower reserve buffers for every slot in between."""
    import numpy as np

    from bus import Message
    from preprocess.preprocessor import Preprocessor
    from replay import recording_messages
    from tests.preprocess_helpers import make_recording

    pre = Preprocessor()
    stream = [msg for _, msg in recording_messages(make_recording(10.0, seed=1, device="d1"))]
    for msg in stream[:-1]:  # ten seconds of data: no window yet
        pre.push(msg, now_s=0.0)
    ancient = Message(kind="raw", device="d1", modality="eda", seq=0, t0_s=0.0, fs_hz=4.0, samples=np.ones(6))
    pre.push(ancient, now_s=0.0)
    assert pre.counters()["clock_jumps"] == 1
    assert pre.nbytes() < 2**20


def test_a_raw_chunk_ending_after_the_bus_time_bound_is_malformed() -> None:
    """Found by the preprocess target: a chunk starting just inside the bound but ending past it
    was accepted, and preprocess's end marker for that device (at the data's end) was then
    refused by every stage downstream."""
    import numpy as np

    from bus import MalformedMessage, Message, decode, encode
    from bus.message import MAX_TIME_S

    chunk = Message(kind="raw", device="d1", modality="eda", seq=0, t0_s=MAX_TIME_S - 1, fs_hz=4.0, samples=np.ones(8))
    with pytest.raises(MalformedMessage) as exc:
        decode([bytes(f) for f in encode(chunk)])
    assert exc.value.reason == "time"
    ok = Message(kind="raw", device="d1", modality="eda", seq=0, t0_s=MAX_TIME_S - 3, fs_hz=4.0, samples=np.ones(8))
    assert decode([bytes(f) for f in encode(ok)]).t0_s == MAX_TIME_S - 3


def test_a_verbio_workbook_with_broken_sheet_xml_is_a_data_error(tmp_path: Path) -> None:
    """Found by the data-set reader target: damage inside an .xlsx raised the XML parser's (or
    zlib's) error from openpyxl, once while the sheet was read rather than opened."""
    from tests.dataset_fixtures import write_verbio

    write_verbio(tmp_path, {"PRE": {"P001": 30}}, seconds=30, seed=3)
    book = next(tmp_path.glob("P001/PRE/E4_EDA*.xlsx"))
    with zipfile.ZipFile(book) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    sheet = next(n for n in members if n.startswith("xl/worksheets/"))
    members[sheet] = members[sheet][: len(members[sheet]) // 2] + b"<<&"
    with zipfile.ZipFile(book, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(DataError, match=r"E4_EDA.*\.xlsx: not a readable \.xlsx workbook \(ParseError"):
        read_source(f"verbio:{tmp_path}")


@pytest.mark.parametrize("shape", [[0, 10**18, 10**18], [0, 2**40, 2**40, 2**40]])
def test_an_empty_array_with_huge_sides_is_malformed(shape: list[int]) -> None:
    """Found by the bus target: numpy's "array is too big" (a plain ValueError, which no stage
    catches) escaped from decode for a zero-size shape whose other sides overflow."""
    import json

    import numpy as np

    from bus import MalformedMessage, Message, decode, encode

    msg = Message(
        kind="window", device="d1", modality="window", seq=0, t0_s=1.6e9, fs_hz=0.0, arrays={"bvp": np.zeros(0)}
    )
    topic, head, samples, _ = [f if isinstance(f, bytes) else memoryview(f).tobytes() for f in encode(msg)]
    tail = json.dumps({"a": [["bvp", "float64", shape]]}).encode()
    head = head[: head.index(b"{")] + tail
    with pytest.raises(MalformedMessage) as exc:
        decode([topic, head, samples, b""])
    assert exc.value.reason == "shape"


def test_a_window_ending_beyond_the_bus_time_range_is_unreadable_meta() -> None:
    """Found by the infer target: a window whose meta said t_end 1e300 was answered, and the
    answer (an affect message at that time) was refused by every store."""
    from inference.dataset import window_meta_problem
    from tests.model_helpers import window

    meta = dict(window(t0=1_600_000_000.0).to_message().meta)
    assert window_meta_problem(meta) is None
    assert window_meta_problem({**meta, "t_end": 1e300}) == "t_end"
    assert window_meta_problem({**meta, "t_end": -5.0}) == "t_end"
