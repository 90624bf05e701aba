"""User-facing errors.

An :class:`ImagicInputError` is bad input from the user: the CLI prints its message on one
line and exits non-zero, without a traceback. Library callers get an ordinary ``ValueError``.
"""


class ImagicInputError(ValueError):
    """Bad user input. ``flag`` names the command-line flag the user should change."""

    def __init__(self, flag: str | None, problem: str):
        self.flag = flag
        self.problem = problem
        super().__init__(f"{flag}: {problem}" if flag else problem)
