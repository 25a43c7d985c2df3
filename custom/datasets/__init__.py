"""Data preparation: chest phantoms, sample real CTs from PyPI wheels, CT -> (CT, two DRRs) cases and datalists."""
