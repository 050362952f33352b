"""The one error contract: every mistake a user can make raises a ``SegbenchError``.

Its message names the file, suite field or option at fault and says what to do. The CLI
turns exactly this class into one line on stderr and exit code 2; any other exception is
a bug in segbench and keeps its traceback.
"""


class SegbenchError(Exception):
    """Bad input from the user (a file, a suite field, an option, the machine): one line, exit 2."""


class UsageError(SegbenchError):
    """A command-line option or a combination of them that cannot work."""


class UnknownNameError(SegbenchError, KeyError):
    """A name (model, dataset kind, ...) that is not registered. A ``KeyError`` too, for
    callers that look names up; printed without the quotes ``KeyError`` adds."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ResultsError(SegbenchError):
    """A results folder that cannot be read or written, or holds records of another scheme."""
