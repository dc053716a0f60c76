"""Errors raised at the project's boundaries.

The command line turns any :class:`RefocusError` into a one-line ``error: ...`` message and a
non-zero exit code (a traceback only with ``--debug``). Messages must name the offending file
(and line / field / item where known) so a user can fix the input without reading code.
"""


class RefocusError(Exception):
    """Base class for errors caused by user input (bad files, bad options, bad items)."""


class VideoError(RefocusError):
    """A video file cannot be opened or decoded (missing, empty, corrupt, no video stream)."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # rebuilt from its fields, so it crosses a process pool intact
        return type(self), (self.path, self.reason)


class QuestionFileError(RefocusError):
    """A question file (JSONL) has an invalid line."""

    def __init__(self, path: object, line: int | None, field: str | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.line, self.field, self.reason)


class ConfigError(RefocusError):
    """A configuration file or option is inconsistent."""
