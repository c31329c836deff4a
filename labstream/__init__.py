"""LSL (Lab Streaming Layer) outlets for the bus, so LabRecorder records m3sense beside EEG or eye tracking.

:mod:`labstream.streams` says what each outlet is (pure); :mod:`labstream.outlets` makes and
feeds the pylsl outlets; :mod:`labstream.node` is the bus subscriber; ``m3sense lsl`` the CLI.
"""
