"""Continual-learning optimisation (docs/methods.md §4, arXiv 2405.09637): the CLASSP optimizer
and the regularisers it is compared with, EWC and MAS."""
from .classp import CLASSP, classp_mask, classp_step
from .ewc import EWC, diagonal_fisher, ewc_penalty
from .mas import MAS, mas_importance, mas_penalty

__all__ = ["CLASSP", "EWC", "MAS", "classp_mask", "classp_step", "diagonal_fisher", "ewc_penalty",
           "mas_importance", "mas_penalty"]
