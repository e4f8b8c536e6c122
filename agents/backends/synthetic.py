"""The ``synthetic`` backend: seeded, context-dependent distributions, no weights.

For every context (the last ``context_window`` tokens) a seeded generator
builds the target distribution ``p`` on a small support ``S`` and the draft
distribution ``q = a*p + (1-a)*r`` with ``r`` supported outside ``S``.  A
drafted token is then accepted i.i.d. with probability ``a`` at every
position, the process the analytic model assumes:

- sampling: the acceptance probability of a drafted token, sum(min(p, q)),
  is exactly ``a`` in every context, and each test draws its own randomness;
- greedy: a coin with probability ``a`` decides whether ``r`` is spread
  thinly (argmax q == argmax p) or is a point mass that beats p's mode (``p``
  is flattened so its mode stays below (1-a)/a).  The coin is seeded by the
  whole sequence before the position (a hash chained token by token), not by
  the context: greedy text falls into short loops whose contexts repeat, and
  a per-context coin would repeat with them.

Real rejection sampling runs on these rows.  Compute takes the time of a
latency profile, ``t_forward(n) = base_ms + per_token_ms * n``: the real work
runs inside that time and the rest is waited out precisely.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.sampling import SamplingConfig
from shaping.clock import now, sleep_until


class ForwardLatency(BaseModel):
    """Modeled time of one forward pass over n tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    base_ms: float = Field(ge=0.0)
    per_token_ms: float = Field(ge=0.0)

    def seconds(self, n_tokens: int) -> float:
        return (self.base_ms + self.per_token_ms * n_tokens) / 1000.0


class SyntheticLatency(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    edge_draft: ForwardLatency
    cloud_draft: ForwardLatency
    cloud_target: ForwardLatency


class SyntheticPairConfig(BaseModel):
    """A synthetic draft/target pair (a model-pair file with ``backend: synthetic``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    backend: Literal["synthetic"] = "synthetic"
    name: str = "synthetic"
    description: str = ""
    vocab_size: int = Field(default=1024, ge=257, le=65536,
                            description="at least 257: one id per byte for prompts, plus EOS")
    acceptance: float = Field(default=0.7, ge=0.01, le=0.99)
    context_window: int = Field(default=4, ge=1, le=64)
    eos_id: int = 0
    seed: int = 0
    latency: SyntheticLatency

    @model_validator(mode="after")
    def _feasible(self) -> "SyntheticPairConfig":
        needed = minimum_vocab_size(self.acceptance)
        if needed > self.vocab_size:
            raise ValueError(
                f"acceptance {self.acceptance} needs a vocab_size of at least {needed}")
        if not 0 <= self.eos_id < self.vocab_size:
            raise ValueError("eos_id must lie inside the vocabulary")
        return self


def support_size(acceptance: float) -> int:
    """Size of p's support: large enough that p's mode can stay below 0.9*(1-a)/a."""
    return max(8, math.ceil(1.5 * acceptance / (0.9 * (1.0 - acceptance))))


def minimum_vocab_size(acceptance: float) -> int:
    """The smallest vocabulary for ``acceptance``: room for r outside p's support (and EOS),
    spread so thinly that (1 - a) / |outside| stays below a * (smallest mode of p, 1/m)."""
    m = support_size(acceptance)
    return max(2 * m + 2, m + 2 + math.floor(m * (1.0 - acceptance) / acceptance))


class ContextDistributions:
    """p and q for a context, deterministic in (seed, context).

    The synthetic pair never emits EOS: its sequences run to the token budget,
    which keeps throughput measurements free of length effects.
    """

    def __init__(self, config: SyntheticPairConfig) -> None:
        self.config = config
        self.support = support_size(config.acceptance)
        self.mode_cap = 0.9 * (1.0 - config.acceptance) / config.acceptance
        self.tokens = np.array([t for t in range(config.vocab_size) if t != config.eos_id])
        self.key = config.seed.to_bytes(8, "little", signed=True)
        # the coin chain of the empty sequence: a domain of its own, apart from p's hashes
        self.root = hashlib.blake2b(b"greedy coin", digest_size=16, key=self.key).digest()

    def chained(self, prefix: bytes, token: int) -> bytes:
        """The coin chain of a sequence from its prefix's and its last token."""
        return hashlib.blake2b(prefix + int(token).to_bytes(8, "little", signed=True),
                               digest_size=16, key=self.key).digest()

    @staticmethod
    def coin(chain: bytes) -> float:
        """Uniform in [0, 1), from a sequence's coin chain."""
        return int.from_bytes(chain[:8], "little") / 2.0 ** 64

    def _generator(self, context: tuple[int, ...]) -> np.random.Generator:
        digest = hashlib.blake2b(np.asarray(context, dtype=np.int64).tobytes(),
                                 digest_size=8, key=self.key).digest()
        return np.random.default_rng(int.from_bytes(digest, "little"))

    def rows(self, context: tuple[int, ...],
             coin: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(p, q) as float32 rows of width vocab_size; ``coin`` (uniform in [0, 1)) decides
        q's greedy agreement, drawn from the context where none is given."""
        a, m, vocab = self.config.acceptance, self.support, self.config.vocab_size
        rng = self._generator(context)
        picked = rng.permutation(len(self.tokens))
        support, outside = self.tokens[picked[:m]], self.tokens[picked[m:]]
        weights = np.sort(rng.dirichlet(np.ones(m)))[::-1]
        if weights[0] > self.mode_cap:
            mix = (self.mode_cap - 1.0 / m) / (weights[0] - 1.0 / m)
            weights = mix * weights + (1.0 - mix) / m
        p = np.zeros(vocab)
        p[support] = weights
        r = np.zeros(vocab)
        if (rng.random() if coin is None else coin) < a:
            r[outside] = 1.0 / len(outside)
        else:
            r[outside[0]] = 1.0
        q = a * p + (1.0 - a) * r
        return p.astype(np.float32), q.astype(np.float32)


class SyntheticSession:
    """One sequence in a synthetic model: the processed tokens and the modeled clock."""

    def __init__(self, model: "SyntheticModel") -> None:
        self.model = model
        self.history: list[int] = []
        self.chains = [model.distributions.root]   # chains[n]: the first n tokens'

    @property
    def processed(self) -> int:
        return len(self.history)

    def forward(self, ids: Sequence[int], all_rows: bool = False) -> np.ndarray:
        started = now()
        window = self.model.distributions.config.context_window
        rows = []
        distributions = self.model.distributions
        for position, token in enumerate(ids):
            self.history.append(int(token))
            self.chains.append(distributions.chained(self.chains[-1], token))
            if all_rows or position == len(ids) - 1:
                context = tuple(self.history[-window:])
                rows.append(self.model.row(context, distributions.coin(self.chains[-1])))
        sleep_until(started + self.model.latency.seconds(len(ids)))
        return np.stack(rows) if all_rows else rows[-1]

    def truncate(self, length: int) -> None:
        del self.history[length:]
        del self.chains[length + 1:]


class SyntheticModel:
    """The draft (q) or the target (p) of a synthetic pair, at one host's speed."""

    def __init__(self, config: SyntheticPairConfig, role: Literal["draft", "target"],
                 latency: ForwardLatency) -> None:
        self.distributions = ContextDistributions(config)
        self.role = role
        self.latency = latency
        self.vocab_size = config.vocab_size
        self.eos_id = config.eos_id

    def row(self, context: tuple[int, ...], coin: float | None = None) -> np.ndarray:
        p, q = self.distributions.rows(context, coin)
        return p if self.role == "target" else q

    def session(self, sampling: SamplingConfig) -> SyntheticSession:
        if sampling.reshapes:
            raise ValueError("the synthetic pair samples its own distributions as they are: "
                             "temperature, top_k and top_p must keep their defaults")
        return SyntheticSession(self)
