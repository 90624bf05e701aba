"""Errors, in two layers.

The library raises typed errors about its own arguments: :class:`ArgumentError` (a value an argument
cannot take, named as the function names it), :class:`ImageFileError` (an image file that cannot be
read) and :class:`ModelError` (a base model that cannot be loaded). Library callers get them as
``ValueError``.

The command line's layer (its config, its run) raises :class:`ImagicInputError`, which names the flag
to change; it maps the library's errors to flags. The CLI prints it on one line and exits with code 2,
without a traceback.
"""


class ImagicInputError(ValueError):
    """Bad user input. ``flag`` names the command-line flag the user should change."""

    def __init__(self, flag: str | None, problem: str):
        self.flag = flag
        self.problem = problem
        super().__init__(f"{flag}: {problem}" if flag else problem)


class ArgumentError(ValueError):
    """A library function's argument ``name`` holds a value that cannot work."""

    def __init__(self, name: str, problem: str):
        self.name, self.problem = name, problem
        super().__init__(f"{name}: {problem}")


class ImageFileError(ValueError):
    """An image file that cannot be used: missing, not a regular file, unreadable, too large."""

    def __init__(self, path, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path} {problem}")


class ModelError(ValueError):
    """A base model that cannot be read or loaded (``name``: its hub id or folder)."""

    def __init__(self, name: str, problem: str):
        self.name, self.problem = name, problem
        super().__init__(f"{name!r}: {problem}")
