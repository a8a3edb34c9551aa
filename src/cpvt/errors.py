"""Exceptions the command line turns into one clear line instead of a traceback."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunLocked(RuntimeError):
    """Another live process holds the run folder; its message names the holder."""
