"""Recorded sources: E4 Connect exports, synthetic sessions, and replaying them as live.
"""

from replay.chunks import PACKET_SAMPLES, recording_messages, topics_of
from replay.e4csv import find_exports, read_e4_export, read_source, write_e4_export
from replay.recording import PERIODIC, TASKS, LabelInterval, Recording, Signal
from replay.simulate import (
    PHASE_LABELS,
    BadSimulationArgument,
    Phase,
    SimulatedSession,
    SubjectProfile,
    simulate_recordings,
    simulate_sessions,
)

__all__ = [
    "PACKET_SAMPLES", "PERIODIC", "PHASE_LABELS", "TASKS", "BadSimulationArgument", "LabelInterval", "Phase",
    "Recording", "Signal", "SimulatedSession", "SubjectProfile", "find_exports", "read_e4_export", "read_source",
    "recording_messages", "simulate_recordings", "simulate_sessions", "topics_of", "write_e4_export",
]
