"""Tools that act on whole bundles: standalone export."""

from custom.core.bundle.export import bundle_entries, export_bundle

__all__ = ["bundle_entries", "export_bundle"]
