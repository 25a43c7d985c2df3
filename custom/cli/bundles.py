"""Bundle commands: standalone export."""

from __future__ import annotations

from custom.cli.common import need_dir


class BundleCommands:
    def export_bundle(self, bundle: str, out_dir: str = "dist"):
        """Write OUT_DIR/NAME_v<version>.zip: the bundle folder plus the project code it needs, runnable anywhere.

        Unzip it, install the packages its configs/metadata.json lists, then
        ``python -m monai.bundle run --config_file NAME/configs/inference.json --bundle_root NAME ...``.
        The zip is reproducible (fixed timestamps, sorted entries): the same tree gives the same bytes.

        Args:
            bundle: a bundle folder, e.g. bundles/mask_refiner_2d.
            out_dir: where to write the zip.
        """
        from custom.core.bundle import export_bundle

        path = export_bundle(bundle, need_dir(out_dir))
        print(path)
        return None
