"""The offline path: a whole recording through the very classes the live node runs.

There is no second implementation: :func:`recording_windows` feeds the messages a replay
would publish (``replay.chunks.recording_messages``, in the order a replay publishes them)
to a :class:`Preprocessor`, so training windows are bit-identical to what the live
pipeline would have produced from the same recording. (``inference.dataset`` turns them into
model arrays through their bus form, the very fields the live inference node reads.)
"""

from __future__ import annotations

from preprocess.preprocessor import Preprocessor
from preprocess.window import Window
from preprocess.windower import WindowConfig
from replay import Recording, recording_messages


def recording_windows(recording: Recording, config: WindowConfig | None = None) -> list[Window]:
    """Every window of ``recording`` (with quality and labels), in time order."""
    pre = Preprocessor(config)
    windows: list[Window] = []
    for due_s, msg in recording_messages(recording):
        windows += pre.push(msg, now_s=due_s)
    windows += pre.flush()
    return windows
