"""One-line errors from ``python -m monai.bundle run``.

MONAI evaluates every config expression and component inside ``try/except Exception`` and re-raises a
``RuntimeError("Failed to evaluate ...")``, and MONAI's ``Compose`` wraps a transform's error the same way, so an
:class:`InputError` raised during a bundle run reaches the user as a long traceback with the useful sentence in the
middle. Two pieces, used by all three bundles, turn it into one ``error: ...`` line and exit status 2:

* :func:`bundle_check` decorates the checker a config calls in its first ``run`` (or ``initialize``) step, before
  any network or data is loaded;
* :class:`StopOnInputError` is an Ignite handler, first in each engine's handler list, for what only shows up
  while the engine runs (an unreadable X-ray found by a transform, a checkpoint that does not fit).

Both stop the process only when it is the ``monai.bundle`` command line (``SystemExit`` is the one exception
MONAI's wrapping lets through). Anywhere else, in tests, ``python -m custom demo`` or the MONAI Label app, which
run bundles inside their own process, the error propagates as usual and the caller reports it.
"""

from __future__ import annotations

import functools
import sys

from custom.core.errors import InputError


def input_error_in(exc: BaseException | None) -> InputError | None:
    """The :class:`InputError` in ``exc`` or in its chain of causes and contexts, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, InputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _message(error: InputError) -> str:
    """The error's own sentence; an error re-raised by a DataLoader worker carries the worker's traceback as its
    message, with the sentence on its last line after the exception's name."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split("InputError: ", 1)[-1]
    return text


def _is_bundle_command() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", "") in ("monai.bundle.__main__", "monai.bundle")


def stop(error: InputError, original: BaseException | None = None):
    """End a bundle run over bad input: one ``error:`` line on stderr and exit status 2 under
    ``python -m monai.bundle``; elsewhere raise ``original`` (or ``error``) for the caller to report."""
    if _is_bundle_command():
        sys.stdout.flush()
        print(f"error: {_message(error)}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    raise original if original is not None else error


def bundle_check(fn):
    """Decorator of a bundle's request checker: an :class:`InputError` it raises goes through :func:`stop`."""

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as e:
            stop(e)

    return checked


class StopOnInputError:
    """Ignite handler (``Events.EXCEPTION_RAISED``): an :class:`InputError` anywhere in the exception's chain goes
    through :func:`stop`; any other exception is raised unchanged.

    Put it first in an engine's handler list: Ignite calls the exception handlers in the order they were attached,
    and MONAI's ``StatsHandler`` logs a full traceback and re-raises before later ones run.
    """

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EXCEPTION_RAISED, self)

    def __call__(self, engine, e: BaseException) -> None:
        # Ignite hands the SystemExit of stop() to the exception handlers once more on its way out: let it pass
        error = input_error_in(e) if isinstance(e, Exception) else None
        if error is None and isinstance(e, RuntimeError) and "Error(s) in loading state_dict" in str(e):
            # MONAI's CheckpointLoader: weights of another architecture than the config builds (a changed setting)
            first = str(e).splitlines()[0]
            error = InputError(
                f"the checkpoint does not fit the network the config builds ({first}); remove the overrides that "
                "change the network, or set ckpt_path to weights trained with them"
            )
        if error is None:
            raise e
        stop(error, original=e)
