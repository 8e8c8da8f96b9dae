"""The one error of structured outputs."""


class GrammarError(ValueError):
    """The grammar cannot be compiled (or passes a limit); the message names the problem."""
