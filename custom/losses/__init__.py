"""Losses that MONAI lacks or that need masking of padded pixels."""

from .refiner import RefinerLoss

__all__ = ["RefinerLoss"]
