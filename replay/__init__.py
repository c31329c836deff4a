"""Recorded sources: E4 Connect exports, synthetic sessions, and replaying them as live."""

from common.lazy import lazy_surface

__all__, __getattr__, __dir__ = lazy_surface(
    __name__,
    {
        "PACKET_SAMPLES": "chunks",
        "recording_messages": "chunks",
        "topics_of": "chunks",
        "find_exports": "e4csv",
        "read_e4_export": "e4csv",
        "read_source": "e4csv",
        "write_e4_export": "e4csv",
        "PERIODIC": "recording",
        "TASKS": "recording",
        "LabelInterval": "recording",
        "Recording": "recording",
        "Signal": "recording",
        "PHASE_LABELS": "simulate",
        "BadSimulationArgument": "simulate",
        "Phase": "simulate",
        "SimulatedSession": "simulate",
        "SubjectProfile": "simulate",
        "simulate_recordings": "simulate",
        "simulate_sessions": "simulate",
    },
)
