"""Continual-learning optimisation (docs/methods.md §4, arXiv 2405.09637): the CLASSP optimizer
and the EWC baseline it is compared with."""
from .classp import CLASSP, classp_mask, classp_step
from .ewc import EWC, diagonal_fisher, ewc_penalty

__all__ = ["CLASSP", "EWC", "classp_mask", "classp_step", "diagonal_fisher", "ewc_penalty"]
