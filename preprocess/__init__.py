"""Preprocessing: causal streaming filters, signal quality and aligned 20 s windows.

The live node (``m3sense preprocess``) and the offline training path
(:func:`recording_windows`) run the same :class:`Preprocessor` / :class:`DeviceWindower`.
"""

from typing import TYPE_CHECKING

from common.lazy import lazy_surface

__all__, __getattr__, __dir__ = lazy_surface(
    __name__,
    {
        "FILTERS": "filters",
        "FilterSpec": "filters",
        "StreamingFilter": "filters",
        "recording_windows": "offline",
        "Preprocessor": "preprocessor",
        "QualityRules": "quality",
        "LABEL_CLASSES": "window",
        "MODALITIES": "window",
        "RATES_HZ": "window",
        "SIZES": "window",
        "WINDOW_S": "window",
        "DeviceEnd": "window",
        "Quality": "window",
        "Window": "window",
        "DeviceWindower": "windower",
        "WindowConfig": "windower",
    },
)

if TYPE_CHECKING:  # the same names, for the type checker (at run time they load on first use)
    from preprocess.filters import FILTERS as FILTERS, FilterSpec as FilterSpec, StreamingFilter as StreamingFilter
    from preprocess.offline import recording_windows as recording_windows
    from preprocess.preprocessor import Preprocessor as Preprocessor
    from preprocess.quality import QualityRules as QualityRules
    from preprocess.window import (
        LABEL_CLASSES as LABEL_CLASSES,
        MODALITIES as MODALITIES,
        RATES_HZ as RATES_HZ,
        SIZES as SIZES,
        WINDOW_S as WINDOW_S,
        DeviceEnd as DeviceEnd,
        Quality as Quality,
        Window as Window,
    )
    from preprocess.windower import DeviceWindower as DeviceWindower, WindowConfig as WindowConfig
