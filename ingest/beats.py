"""Heart beats from BVP for the BLE path: the detector of :mod:`e4.beats`, re-exported here
because the per-device pipeline (``ingest.device``) publishes its beats and heart rates."""

from __future__ import annotations

from e4.beats import Beat, BeatDetector, BeatOutput, HeartRate

__all__ = ["Beat", "BeatDetector", "BeatOutput", "HeartRate"]
