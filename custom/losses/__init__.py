"""Losses that MONAI lacks or that need masking of padded pixels."""

from .ct_refinement import DetailRefinementLoss, SuperResolutionLoss, frequency_loss
from .refiner import RefinerLoss

__all__ = ["DetailRefinementLoss", "RefinerLoss", "SuperResolutionLoss", "frequency_loss"]
