"""Checking settings from users: one function per kind of value, each refusing bad input with an :class:`InputError`.

Settings reach the code as whatever the command line parser made of them: ``python -m custom`` and
``python -m monai.bundle run`` both use Fire, which turns ``2.5`` into a float, ``False`` into a bool but ``false``
into the string ``'false'`` (truthy), and ``abc`` into a string. Python's ``int()`` would silently round the first
and ``bool()`` read the second as true, so every setting goes through one of these instead. ``name`` is how the user
wrote the setting (``--steps`` on the command line, ``num_inference_steps`` for a bundle key) and starts each message.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from pathlib import Path

from custom.core.errors import InputError

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")


def as_bool(value, name: str) -> bool:
    """True/False from a bool, 0/1, or one of true/false/1/0/yes/no in any case; anything else is refused."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise InputError(f"{name} must be true or false (also 1/0, yes/no), got {value!r}")


def as_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """A whole number within [minimum, maximum]; 2.5, '3x' and True are refused rather than rounded or cast."""
    number = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            pass
    if number is None:
        raise InputError(f"{name} must be a whole number, got {value!r}")
    _check_range(number, name, minimum, maximum)
    return number


def as_float(
    value,
    name: str,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    hint: str = "",
) -> float:
    """A finite number within [minimum, maximum] and, when ``above`` is given, strictly greater than it."""
    number = None
    if not isinstance(value, bool):
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            pass
    if number is None or not math.isfinite(number):
        raise InputError(f"{name} must be a number{hint}, got {value!r}")
    if above is not None and not number > above:
        raise InputError(f"{name} must be greater than {above:g}{hint}, got {value!r}")
    _check_range(number, name, minimum, maximum, hint)
    return number


def as_choice(value, name: str, choices) -> str:
    """One of ``choices``, exactly (configs compare the value as it is written); the message lists them."""
    choices = [str(c) for c in choices]
    if isinstance(value, str) and value in choices:
        return value
    raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def as_names(value, name: str) -> list[str]:
    """Names separated by commas, stripped, empty ones dropped; Fire hands ``a,b`` over as a tuple, which counts too."""
    if isinstance(value, (list, tuple)):
        parts = [str(v) for v in value]
    elif isinstance(value, str):
        parts = value.split(",")
    else:
        raise InputError(f"{name} must be names separated by commas, got {value!r}")
    return [p.strip() for p in parts if p.strip()]


def _check_range(number, name, minimum, maximum, hint: str = "") -> None:
    if minimum is not None and number < minimum:
        raise InputError(f"{name} must be at least {minimum:g}{hint}, got {number:g}")
    if maximum is not None and number > maximum:
        raise InputError(f"{name} must be at most {maximum:g}{hint}, got {number:g}")


def need_file(path, name: str, hint: str = "") -> Path:
    """An existing file; the message names the setting and, with ``hint`` ("; set it to ..."), what to do."""
    if path is None or str(path).strip() == "":
        raise InputError(f"{name} is not set{hint}")
    p = Path(os.fspath(str(path))).expanduser()
    if not p.is_file():
        raise InputError(f"{name} {p}: no such file{hint}")
    return p


def writable_dir(path, name: str) -> Path:
    """Check, before any work, that the folder ``path`` can be created (if missing) and written; creates nothing.

    The test is a real file created and removed in the nearest existing folder, so read-only mounts, ACLs and
    folders owned by someone else are caught as well as permission bits.
    """
    if path is None or str(path).strip() == "":
        raise InputError(f"no output folder given; set {name}")
    p = Path(os.fspath(str(path))).expanduser()
    existing = p
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(f"{name}: {existing} exists and is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".write-test-"):
            pass
    except OSError as e:
        where = "" if existing == p else f" (it would be created in {existing})"
        raise InputError(
            f"{name}: cannot write to {p}{where}: {e.strerror or e}; choose another folder or fix its permissions"
        ) from None
    return p
