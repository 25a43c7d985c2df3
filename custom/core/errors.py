"""User-facing errors.

An :class:`InputError` says what is wrong with the user's input and what to do about it. The command line prints
its message without a traceback and exits with status 2; library callers can catch it like any ``ValueError``.
"""


class InputError(ValueError):
    """Bad input from the user: a missing file, a volume that is not CT, an unusable setting."""
