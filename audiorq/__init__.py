"""audiorq: BYOL-A style audio representation learning with randomized quantization."""

__version__ = "0.1.0"
