"""m3sense: the application shell (CLI, configuration, starting the stages)."""

__version__ = "0.1.0"
