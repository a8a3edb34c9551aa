"""The package version, in the lowest layer so that anything (checkpoints, the CLI) can read it without climbing."""

__version__ = "0.1.0"
