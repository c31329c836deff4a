"""Preprocessing: causal streaming filters, signal quality and aligned 20 s windows.

The live node (``m3sense preprocess``) and the offline training path
(:func:`recording_windows`) run the same :class:`Preprocessor` / :class:`DeviceWindower`.
"""

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
