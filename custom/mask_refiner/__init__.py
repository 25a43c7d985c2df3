"""Product: a coarse 2D segmentation probability map plus its image in, a refined mask out."""
