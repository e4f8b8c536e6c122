"""Decoding settings, applied identically by the draft and the target.

``SamplingConfig`` travels with every query; a model session turns logits
into the distribution these settings define (temperature, then top-k, then
top-p), and both sides sample and verify on exactly that distribution.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Decoding = Literal["greedy", "sampling"]
# A seed: what numpy's SeedSequence (non-negative) and msgpack's int64 both take.
Seed = Annotated[int, Field(ge=0, lt=2**63)]
MAX_TOP_K = 1 << 20                 # above every vocabulary


class SamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    decoding: Decoding = "greedy"
    temperature: float = Field(default=1.0, gt=0.0, le=100.0)
    top_k: int = Field(default=0, ge=0, le=MAX_TOP_K,
                       description="keep the k most likely tokens; 0 keeps all")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="nucleus mass to keep")

    @property
    def reshapes(self) -> bool:
        """True when the settings change the model's distribution (not plain softmax)."""
        return self.temperature != 1.0 or self.top_k > 0 or self.top_p < 1.0
