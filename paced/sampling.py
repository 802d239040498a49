"""What every rollout engine takes and returns: ``SamplingParams`` in (vLLM's names), ``Rollouts``
out. Both engines (``paced.rollout.sample`` on the training model, ``paced.vllm_engine``) build
on this module, which imports neither."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 32
    seed: int = 0


@dataclass
class Rollouts:
    prompt_ids: list[list[int]]    # the unique prompts, unpadded
    prompt_index: torch.Tensor     # (N,) which prompt each row answers
    completion_ids: torch.Tensor   # (N, L) right-padded with pad_token_id
    completion_mask: torch.Tensor  # (N, L) 1 on generated tokens, EOS included
    sample_logp: torch.Tensor      # (N, L) log-prob of each sampled token (0 on padding)
    finished: torch.Tensor         # (N,) True if the row ended with a stop token, False if cut at max_tokens

    @property
    def lengths(self) -> torch.Tensor:  # (N,)
        return self.completion_mask.sum(-1)

    def texts(self, tokenizer) -> list[str]:
        """Decoded completions without special tokens (EOS, padding)."""
        return tokenizer.batch_decode(
            [ids[: int(n)] for ids, n in zip(self.completion_ids.tolist(), self.lengths)],
            skip_special_tokens=True,
        )
