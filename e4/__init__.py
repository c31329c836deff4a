"""Facts about the Empatica E4 that more than one stage relies on.

A ground floor below the stages: ingest, replay, preprocess and storage may import it, and it
imports none of them, so a fact stated here is stated once.
"""

#: Smallest non-zero conductance the BLE EDA characteristic can express (µS): it carries skin
#: resistance in 24 bits, and an open circuit (no skin) saturates them (e4-facts.md 1.3).
BLE_EDA_FLOOR_US = 1e6 / (2**24 - 1)  # 0.0596 µS

#: EDA below this (µS) means the electrodes do not touch skin. Off the wrist an exported file
#: reads exactly 0 and the BLE path reads its floor, 0.0596 µS; 0.06 sits just above both. On
#: the ten real WESAD wrists no worn second stays below it (0.07 would flag six; Kleckner et
#: al.'s 0.05 misses the BLE floor).
OFF_WRIST_EDA_US = 0.06

#: Native sample rates of the E4's regular streams (Hz); HR is the 1 Hz stream of E4 Connect
#: exports and the BLE path's derived heart rate.
RATES_HZ = {"bvp": 64.0, "acc": 32.0, "eda": 4.0, "temp": 4.0, "hr": 1.0}

#: How far a stated rate may stray from the native one, as a factor either way. E4 clocks drift
#: by ppm; a rate off by more than this is a broken or hostile sender or file, refused rather
#: than stretched over absurd spans (nearer ones are placed by their timestamps and flagged).
RATE_FACTOR = 2.0

#: Values per sample of each periodic stream: ACC carries three axes, the others one.
CHANNELS = {"bvp": 1, "acc": 3, "eda": 1, "temp": 1, "hr": 1}

#: The classes each task's model predicts, in logit order; a window under any other label gets
#: none (WESAD's meditation is not a stress class). Checkpoints store their own copy.
TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "stress": ("baseline", "stress", "amusement"),
    "anxiety": ("low", "high"),
    "emotion": ("low", "high"),
}


def rate_is_plausible(modality: str, fs_hz: float) -> bool:
    """Whether ``fs_hz`` is within :data:`RATE_FACTOR` of ``modality``'s native rate."""
    nominal = RATES_HZ[modality]
    return nominal / RATE_FACTOR <= fs_hz <= nominal * RATE_FACTOR
