"""User-facing errors.

Every problem a user can fix (bad path, bad flag value, unsupported model, too
little data) is raised as :class:`DepthpruneError` with one sentence saying
what is wrong and what to do. The CLI prints that sentence and exits with
code 2; anything else is a bug and keeps its traceback.
"""


# Log level of notes the CLI shows by default (between INFO and WARNING): something slow or large is happening
# that the user did not ask for by name (the one-time dequantized cache of a demo model).
NOTE = 25


class DepthpruneError(Exception):
    """A problem with the user's input, explained in one sentence."""


class NonFiniteActivationError(DepthpruneError):
    """A layer produced NaN or inf activations while scoring."""
