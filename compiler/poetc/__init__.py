"""poetc: compile neural-network training to microcontrollers (POET schedules emitted as C)."""

__version__ = "0.1.0"
