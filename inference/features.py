"""Standard wrist features of a window: what the feature baselines learn from and what the
per-wearer calibration summarises.

One row per window, in :data:`FEATURES` order, from the window arrays preprocess publishes
(filtered, sensor units). Names carry their units:

==================  =====================================================================
``eda_mean_us``     mean skin conductance (µS)
``eda_sd_us``       its standard deviation within the window (µS)
``eda_min_us``      lowest conductance (µS), close to the tonic level
``eda_max_us``      highest conductance (µS)
``eda_slope_us_s``  least-squares slope (µS/s): a rising tonic level
``scr_count``       skin-conductance responses: peaks with prominence ≥ 0.01 µS
``scr_amp_us``      their mean prominence (µS; 0 without one)
``eda_log``         log of the mean conductance: levels differ tenfold between people
``temp_mean_c``     mean wrist temperature (°C): a between-person confound, used relative only
``temp_sd_c``       its standard deviation (°C)
``temp_slope_c_s``  slope (°C/s): hands cool under stress
``hr_bpm``          heart rate from BVP beats (NaN with fewer than three plausible beats)
``ibi_sd_s``        SDNN of the beat intervals (s)
``ibi_rmssd_s``     RMSSD of successive intervals (s)
``bvp_sd``          BVP amplitude (SD in the pulse band): vasoconstriction
``bvp_p90p10``      BVP spread between its 90th and 10th percentiles
``acc_mag_g``       mean |acc| (g)
``acc_mag_sd_g``    SD of |acc| (g): movement
``acc_sd_g``        summed per-axis SD (g): movement including rotation
``hr_range_bpm``    highest minus lowest beat-to-beat rate: brief surges (a laugh, a startle)
``beat_amp_ratio``  10th over 90th percentile of beat amplitudes: a pulse that shrinks for
                    seconds (brief vasoconstriction)
``eda_max_rise_us_s``  steepest 1 s rise of EDA (µS/s): the onset of a response
``acc_jolt_g``      largest SD of |acc| over 1 s blocks (g): a brief jolt of the arm
==================  =====================================================================

Beats come from the one beat detector, :mod:`e4.beats`, run over the window from a cold start:
``hr_bpm`` is its rate over the whole window, the variability features use the intervals it
publishes (those consistent with their neighbours) and the amplitude ratio their heights in
the pulse band; within 20 s that is enough for rate and short-term variability, not for
frequency-domain HRV. The features are causal per window: nothing looks past its end.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.signal import butter, find_peaks, sosfiltfilt

from e4 import CHANNELS, RATES_HZ
from e4.beats import BAND_HZ, rate_bpm, window_beats

FEATURES: tuple[str, ...] = (
    "eda_mean_us",
    "eda_sd_us",
    "eda_min_us",
    "eda_max_us",
    "eda_slope_us_s",
    "scr_count",
    "scr_amp_us",
    "eda_log",
    "temp_mean_c",
    "temp_sd_c",
    "temp_slope_c_s",
    "hr_bpm",
    "ibi_sd_s",
    "ibi_rmssd_s",
    "bvp_sd",
    "bvp_p90p10",
    "acc_mag_g",
    "acc_mag_sd_g",
    "acc_sd_g",
    "hr_range_bpm",
    "beat_amp_ratio",
    "eda_max_rise_us_s",
    "acc_jolt_g",
)
_FS = RATES_HZ
SCR_MIN_PROMINENCE_US = 0.01
#: The pulse band of the beat detector, filtered forward and backward within the window for the
#: BVP amplitude features (the window is complete when it is answered: nothing later is used).
_PULSE_BAND = butter(2, BAND_HZ, btype="bandpass", fs=RATES_HZ["bvp"], output="sos")


def _slope(x: np.ndarray, fs: float) -> np.ndarray:
    """Least-squares slope per row of (B, n) samples, in units per second."""
    t = np.arange(x.shape[1]) / fs
    tc = t - t.mean()
    return (x - x.mean(axis=1, keepdims=True)) @ tc / float(tc @ tc)


def _scr(eda: np.ndarray) -> tuple[float, float]:
    _, props = find_peaks(eda, prominence=SCR_MIN_PROMINENCE_US)
    prom = props["prominences"]
    return float(len(prom)), float(prom.mean()) if len(prom) else 0.0


def _beats(bvp: np.ndarray, fs: float) -> tuple[float, float, float, float, float]:
    """Heart rate (bpm), SDNN and RMSSD (s), the beat-rate range (bpm) and the beat amplitude
    ratio of one window's BVP; NaN where fewer than three intervals back them."""
    if not np.ptp(bvp) > 0:
        return (np.nan,) * 5
    peaks, beats = window_beats(bvp, fs)
    hr = rate_bpm(peaks)
    if len(beats) < 3:
        return (np.nan if hr is None else hr,) + (np.nan,) * 4
    ibi = np.array([b.ibi_s for b in beats])
    rate = 60.0 / ibi
    lo, hi = np.percentile([b.amp for b in beats], (10, 90))
    return (
        np.nan if hr is None else hr,
        float(ibi.std()),
        float(np.sqrt(np.mean(np.diff(ibi) ** 2))),
        float(rate.max() - rate.min()),
        float(lo / hi) if hi > 0 else np.nan,
    )


def window_features(signals: Mapping[str, np.ndarray]) -> np.ndarray:
    """(B, len(FEATURES)) float32 from window arrays ``bvp`` (B, 1280), ``eda`` (B, 80),
    ``temp`` (B, 80), ``acc`` (B, 640, 3) (a trailing channel axis of 1 is accepted). A feature
    that cannot be computed (no beats found) is NaN; models impute it."""
    eda = np.asarray(signals["eda"], dtype=np.float64).reshape(len(signals["eda"]), -1)
    temp = np.asarray(signals["temp"], dtype=np.float64).reshape(len(signals["temp"]), -1)
    bvp = np.asarray(signals["bvp"], dtype=np.float64).reshape(len(signals["bvp"]), -1)
    acc = np.asarray(signals["acc"], dtype=np.float64).reshape(len(signals["acc"]), -1, 3)
    n = eda.shape[0]
    out = np.full((n, len(FEATURES)), np.nan)
    out[:, 0] = eda.mean(axis=1)
    out[:, 1] = eda.std(axis=1)
    out[:, 2] = eda.min(axis=1)
    out[:, 3] = eda.max(axis=1)
    out[:, 4] = _slope(eda, _FS["eda"])
    out[:, 7] = np.log(np.maximum(out[:, 0], 0.01))
    out[:, 8] = temp.mean(axis=1)
    out[:, 9] = temp.std(axis=1)
    out[:, 10] = _slope(temp, _FS["temp"])
    for i in range(n):
        out[i, 5:7] = _scr(eda[i])
        detrended = sosfiltfilt(_PULSE_BAND, bvp[i]) if np.ptp(bvp[i]) > 0 else np.zeros_like(bvp[i])
        out[i, [11, 12, 13, 19, 20]] = _beats(bvp[i], _FS["bvp"])
        out[i, 14] = detrended.std()
        p90, p10 = np.percentile(detrended, (90, 10))
        out[i, 15] = p90 - p10
    mag = np.linalg.norm(acc, axis=2)
    out[:, 16] = mag.mean(axis=1)
    out[:, 17] = mag.std(axis=1)
    out[:, 18] = acc.std(axis=1).sum(axis=1)
    fs_eda = int(_FS["eda"])
    out[:, 21] = (eda[:, fs_eda:] - eda[:, :-fs_eda]).max(axis=1)
    fs_acc = int(_FS["acc"])
    blocks = mag[:, : mag.shape[1] // fs_acc * fs_acc].reshape(n, -1, fs_acc)
    out[:, 22] = blocks.std(axis=2).max(axis=1)
    return out.astype(np.float32)


_SHAPES = {
    m: (round(20.0 * RATES_HZ[m]),) if CHANNELS[m] == 1 else (round(20.0 * RATES_HZ[m]), CHANNELS[m])
    for m in ("bvp", "eda", "temp", "acc")
}


def message_features(windows) -> np.ndarray:
    """(B, F) features of window messages (``preprocess`` window arrays), the one call the
    live node and the training path share. A window whose arrays are missing or of the wrong
    size (nothing preprocess makes) gets NaN features rather than stopping the node."""
    out = np.full((len(windows), len(FEATURES)), np.nan, np.float32)
    good = [
        i
        for i, w in enumerate(windows)
        if all(np.size(w.arrays.get(m, ())) == int(np.prod(shape)) for m, shape in _SHAPES.items())
    ]
    if good:
        out[good] = window_features(
            {
                m: np.stack([np.asarray(windows[i].arrays[m], dtype=np.float32).reshape(shape) for i in good])
                for m, shape in _SHAPES.items()
            }
        )
    return out
