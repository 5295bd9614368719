"""lotus_pl: diffusion-based dense prediction (Lotus) on PyTorch Lightning."""

__version__ = "0.1.0"
