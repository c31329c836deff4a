"""Recorded sources: E4 Connect exports, synthetic sessions, and replaying them as live."""

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:  # the same names, for the type checker (at run time they load on first use)
    from replay.chunks import (
        PACKET_SAMPLES as PACKET_SAMPLES,
        recording_messages as recording_messages,
        topics_of as topics_of,
    )
    from replay.e4csv import (
        find_exports as find_exports,
        read_e4_export as read_e4_export,
        read_source as read_source,
        write_e4_export as write_e4_export,
    )
    from replay.recording import (
        PERIODIC as PERIODIC,
        TASKS as TASKS,
        LabelInterval as LabelInterval,
        Recording as Recording,
        Signal as Signal,
    )
    from replay.simulate import (
        PHASE_LABELS as PHASE_LABELS,
        BadSimulationArgument as BadSimulationArgument,
        Phase as Phase,
        SimulatedSession as SimulatedSession,
        SubjectProfile as SubjectProfile,
        simulate_recordings as simulate_recordings,
        simulate_sessions as simulate_sessions,
    )
