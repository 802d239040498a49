"""PPO's critic: a copy of the policy's backbone with a zero-initialised scalar head, and its
values over a packed batch. Deviation: TRL's critic starts from a reward model's backbone; paced
has no reward model, so it starts from the policy's.
"""
from __future__ import annotations

import copy

import torch

from ..teacher import backbone


class ValueModel(torch.nn.Module):
    """PPO critic: a copy of the policy's backbone and a scalar head, V(q, o_<t) per position."""

    def __init__(self, policy):
        super().__init__()
        self.body = copy.deepcopy(backbone(policy))
        self.head = torch.nn.Linear(policy.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, ids, mask, pos, P: int, R: int) -> torch.Tensor:
        h = self.body(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
        return self.head(h[:, P - 1: P + R - 1]).squeeze(-1).float()          # (B, R)


@torch.no_grad()
def critic_values(critic, batches, N, L, dev):
    """V_t for every completion token of the batch (N, L) and the completion mask (N, L)."""
    values, cmask, at = torch.zeros(N, L), torch.zeros(N, L), 0
    for ids, mask, pos, P, R in batches:
        v = critic(ids, mask, pos, P, R).cpu()                               # (b, R)
        b = ids.shape[0]
        values[at:at + b, :R], cmask[at:at + b, :R] = v, mask[:, P:].float().cpu()
        at += b
    return values * cmask, cmask
