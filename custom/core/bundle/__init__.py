"""Tools that act on whole bundles: reading their configs and networks, and standalone export."""

from custom.core.bundle.export import bundle_entries, export_bundle
from custom.core.bundle.loading import build_network, load_bundle_network, load_weights, make_parser, read_bundle_config

__all__ = [
    "build_network",
    "bundle_entries",
    "export_bundle",
    "load_bundle_network",
    "load_weights",
    "make_parser",
    "read_bundle_config",
]
