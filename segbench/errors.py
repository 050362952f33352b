"""The one error contract: every mistake a user can make raises a ``SegbenchError``.

Its message names the file, suite field or option at fault and says what to do. The CLI
turns exactly this class into one line on stderr and exit code 2; any other exception is
a bug in segbench and keeps its traceback.
"""


class SegbenchError(Exception):
    """Bad input from the user (a file, a suite field, an option, the machine): one line, exit 2."""
