"""Encoders and self-supervised learners."""

from audiorq.models.byol import BYOLLearner, MLPHead, byol_loss, momentum_update
from audiorq.models.ntt import AudioNTT2020

__all__ = ["AudioNTT2020", "BYOLLearner", "MLPHead", "byol_loss", "momentum_update"]
