"""Reading a bundle from its folder: its configs through MONAI's ConfigParser, its network with weights read safely.

One place for the command line, the benchmarks and the MONAI Label app, so that a bundle's network is built and
its weights checked the same way everywhere. Nothing here downloads anything.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Sequence

import torch
from monai.bundle import ConfigParser

from custom.core.checkpoint import read_state_dict
from custom.core.errors import InputError


def read_bundle_config(bundle_dir, names: str | Sequence[str] = "inference.json") -> dict:
    """The raw config of ``bundle_dir/configs/<names>`` (several names are layered in order), unevaluated."""
    names = [names] if isinstance(names, str) else list(names)
    files = [Path(bundle_dir) / "configs" / n for n in names]
    for f in files:
        if not f.is_file():
            raise InputError(f"{bundle_dir}: not a bundle folder with configs/{f.name}")
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    return parser.get()


def _json_kind(value) -> str | None:
    """The JSON type of a config value as users write it ('number', 'text', ...); None for what a config computes
    (``$`` expressions, ``@`` references, components) or leaves open (null)."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return None if value.startswith(("$", "@", "%")) else "text"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return None if "_target_" in value else "dict"
    return None


def check_overrides(parser: ConfigParser, overrides: dict, option: str = "--overrides") -> None:
    """Refuse overrides of keys the config does not have, and values of another JSON type than the config's own
    (``{"channels": "abc"}`` for a list, ``{"volume_size": "64"}`` for a number, lists with such elements): caught
    here, they get one clear message instead of an error from deep inside the network's constructor."""
    for key, value in overrides.items():
        if key not in parser:
            raise InputError(f"{option}: the bundle's config has no key {key!r}")
        current = parser[key]
        want, got = _json_kind(current), _json_kind(value)
        if want is None or value is None:
            continue
        if got != want:
            raise InputError(f"{option}: {key} must be a {want} like {json.dumps(current)}, got {json.dumps(value)}")
        if want == "list" and current:
            inner = {_json_kind(v) for v in current}
            bad = [v for v in value if len(inner) == 1 and _json_kind(v) not in inner | {None}]
            if bad:
                kind = inner.pop()
                raise InputError(f"{option}: {key} must be a list of {kind}s like {json.dumps(current)}, got {value}")


def make_parser(config: dict, bundle_dir, overrides: dict | None = None) -> ConfigParser:
    """A fresh parser over a copy of ``config`` with ``bundle_root`` and ``overrides`` set: parsed objects are
    never shared between two uses of the same config (two requests, two evaluations)."""
    parser = ConfigParser(copy.deepcopy(config))
    parser["bundle_root"] = str(bundle_dir)
    check_overrides(parser, overrides or {})
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def load_weights(network: torch.nn.Module, path, hint: str = "") -> torch.nn.Module:
    """Load a checkpoint of plain tensors (``{"model": state}`` or a bare state dict) strictly into ``network``.

    Read with ``weights_only=True``, so a checkpoint cannot run code. ``hint`` ends the message of a mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such weights file")
    try:
        state = read_state_dict(path)
    except Exception as e:
        raise InputError(f"{path}: not a plain state dict of tensors ({type(e).__name__}: {e})") from None
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(f"{path}: does not fit the bundle's network ({str(e).splitlines()[0]}){hint}") from None
    return network


def build_network(parser: ConfigParser, weights=None, device="cpu", hint: str = "") -> torch.nn.Module:
    """The config's ``network_def``, with ``weights`` loaded when given, on ``device`` in eval mode."""
    try:
        net = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as e:  # MONAI wraps the constructor's error: report the innermost message
        while (e.__cause__ or e.__context__) is not None:
            e = e.__cause__ or e.__context__
        raise InputError(f"the bundle's network cannot be built with these settings: {e}{hint}") from None
    if weights:
        load_weights(net, weights, hint)
    return net.to(device).eval()


def load_bundle_network(bundle, weights=None, overrides: dict | None = None, device="cpu", config="train.json"):
    """(network in eval mode, parser) of a bundle's ``config`` with ``overrides``; weights loaded strictly."""
    parser = make_parser(read_bundle_config(bundle, config), bundle, overrides)
    hint = f"; pass the overrides it was trained with (given: {overrides or {}})"
    return build_network(parser, weights, device, hint), parser
