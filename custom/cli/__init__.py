"""Command line: ``python -m custom <command> [args] [--flags]``; ``python -m custom <command> --help`` explains one.

One module per command group (``data``, ``xray2ct``, ``mask_refiner``, ``bundles``); :class:`Commands` joins them.
Bad input ends with an ``error: ...`` message on stderr (one line, or one item per line where several things are
missing) and exit status 2, never a traceback.
"""

from __future__ import annotations

import sys

from custom.cli.bundles import BundleCommands
from custom.cli.data import DataCommands
from custom.cli.mask_refiner import MaskRefinerCommands
from custom.cli.xray2ct import XRayToCTCommands
from custom.core.bundle.errors import input_error_in


class Commands(DataCommands, XRayToCTCommands, MaskRefinerCommands, BundleCommands):
    """X-ray to CT toolkit: data preparation, X-ray physics, evaluation, the mask refiner and bundle export."""


def main(argv=None) -> int:
    import fire

    try:
        fire.Fire(Commands(), command=argv, name="custom")
    except Exception as e:
        # a bundle run inside a command (demo, refiner-workflow) wraps the InputError in MONAI's RuntimeErrors
        error = input_error_in(e)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
