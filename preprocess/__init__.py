"""Preprocessing: causal streaming filters, signal quality and aligned 20 s windows.

The live node (``m3sense preprocess``) and the offline training path
(:func:`recording_windows`) run the same :class:`Preprocessor` / :class:`DeviceWindower`.
"""

from preprocess.filters import FILTERS, FilterSpec, StreamingFilter
from preprocess.offline import recording_windows
from preprocess.preprocessor import Preprocessor
from preprocess.quality import QualityRules
from preprocess.window import LABEL_CLASSES, MODALITIES, RATES_HZ, SIZES, WINDOW_S, DeviceEnd, Quality, Window
from preprocess.windower import DeviceWindower, WindowConfig

__all__ = [
    "FILTERS", "LABEL_CLASSES", "MODALITIES", "RATES_HZ", "SIZES", "WINDOW_S",
    "DeviceEnd", "DeviceWindower", "FilterSpec", "Preprocessor", "Quality", "QualityRules", "StreamingFilter",
    "Window", "WindowConfig", "recording_windows",
]
