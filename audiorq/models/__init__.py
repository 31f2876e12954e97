"""Encoders and self-supervised learners."""

from audiorq.models.ntt import AudioNTT2020

__all__ = ["AudioNTT2020"]
