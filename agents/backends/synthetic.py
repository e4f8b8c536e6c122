"""The ``synthetic`` backend: seeded, context-dependent distributions, no weights.

For every context (the last ``context_window`` tokens) a seeded generator
builds the target distribution ``p`` on a small support ``S`` and the draft
distribution ``q = a*p + (1-a)*r`` with ``r`` supported outside ``S``.  The
rate ``a`` is ``acceptance`` at every position (i.i.d., the default), or
``acceptance_by_position[i-1]`` for the i-th draft of a block (the last value
past the list's end): the draft session learns where each block starts from
``start_block``, and rows outside a block (the draft decoding alone) are
position 1's.  A drafted token is then accepted with probability a_i given
that the drafts before it were, the process the analytic model assumes:

- sampling: the acceptance probability of a drafted token, sum(min(p, q)),
  is exactly ``a`` in every context, and each test draws its own randomness;
- greedy: a coin with probability ``a`` decides whether ``r`` is spread
  thinly (argmax q == argmax p) or is a point mass that beats p's mode (``p``
  is flattened so its mode stays below (1-a)/a for the largest a below 1 of
  the law).  The coin is seeded by the
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

from nasd.analytic import Acceptance

from agents.sampling import SamplingConfig, Seed
from shaping.clock import now, sleep_until


MAX_FORWARD_MS = 60_000.0       # a modeled forward pass: a minute at most


class ForwardLatency(BaseModel):
    """Modeled time of one forward pass over n tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    base_ms: float = Field(ge=0.0, le=MAX_FORWARD_MS)
    per_token_ms: float = Field(ge=0.0, le=MAX_FORWARD_MS)

    def seconds(self, n_tokens: int) -> float:
        return (self.base_ms + self.per_token_ms * n_tokens) / 1000.0


class SyntheticLatency(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    edge_draft: ForwardLatency
    cloud_draft: ForwardLatency
    cloud_target: ForwardLatency


DEFAULT_ACCEPTANCE = 0.7


class SyntheticPairConfig(BaseModel):
    """A synthetic draft/target pair (a model-pair file with ``backend: synthetic``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    backend: Literal["synthetic"] = "synthetic"
    name: str = "synthetic"
    description: str = ""
    vocab_size: int = Field(default=1024, ge=257, le=65536,
                            description="at least 257: one id per byte for prompts, plus EOS")
    acceptance: float | None = Field(default=None, ge=0.01, le=0.99,
                                     description="i.i.d. per-token acceptance (default 0.7)")
    acceptance_by_position: tuple[float, ...] | None = Field(
        default=None, min_length=1, max_length=64,
        description="acceptance of the 1st, 2nd, ... draft of a block given the ones before "
                    "it were accepted, each in [0, 1]; later positions take the last value")
    context_window: int = Field(default=4, ge=1, le=64)
    eos_id: int = 0
    seed: Seed = 0
    latency: SyntheticLatency

    @model_validator(mode="before")
    @classmethod
    def _iid_by_default(cls, data):
        if isinstance(data, dict) and data.get("acceptance_by_position") is None \
                and data.get("acceptance") is None:
            data = {**data, "acceptance": DEFAULT_ACCEPTANCE}
        return data

    @model_validator(mode="after")
    def _feasible(self) -> "SyntheticPairConfig":
        if self.acceptance_by_position is not None:
            if self.acceptance is not None:
                raise ValueError("give acceptance (i.i.d.) or acceptance_by_position, not both")
            if not all(0.0 <= rate <= 1.0 for rate in self.acceptance_by_position):
                raise ValueError("acceptance_by_position: every rate must be in [0, 1]")
        needed = minimum_vocab_size(self.rates)
        if needed > self.vocab_size:
            raise ValueError(f"acceptance {self.acceptance_law} needs a vocab_size of at "
                             f"least {needed}")
        if not 0 <= self.eos_id < self.vocab_size:
            raise ValueError("eos_id must lie inside the vocabulary")
        return self


    @property
    def acceptance_law(self) -> Acceptance:
        """The configured acceptance as ``nasd.analytic`` takes it: one rate, or rates by position."""
        return self.acceptance if self.acceptance_by_position is None else self.acceptance_by_position

    @property
    def rates(self) -> tuple[float, ...]:
        """Every rate of the law (one for i.i.d.)."""
        return self.acceptance_by_position or (self.acceptance,)

    def rate_at(self, position: int) -> float:
        """a_i of the ``position``-th draft of a block (1-based)."""
        rates = self.rates
        return rates[min(position, len(rates)) - 1]


def mixing_rates(rates: Acceptance) -> tuple[float, ...]:
    """The rates of a law (one, or by position) that shape p and the vocabulary: those
    strictly between 0 and 1 (at 0, q is r alone and never agrees; at 1, q is p and always
    does)."""
    return tuple(float(rate) for rate in np.atleast_1d(rates) if 0.0 < rate < 1.0)


def support_size(rates: Acceptance) -> int:
    """Size of p's support: large enough that p's mode can stay below 0.9*(1-a)/a for the
    largest mixing rate a."""
    mixing = mixing_rates(rates)
    if not mixing:
        return 8
    a = max(mixing)
    return max(8, math.ceil(1.5 * a / (0.9 * (1.0 - a))))


def minimum_vocab_size(rates: Acceptance) -> int:
    """The smallest vocabulary for the law ``rates``: room for r outside p's support (and EOS),
    spread so thinly that (1 - a) / |outside| stays below a * (smallest mode of p, 1/m) for
    the smallest mixing rate a."""
    m, mixing = support_size(rates), mixing_rates(rates)
    spread = math.floor(m * (1.0 - min(mixing)) / min(mixing)) if mixing else 0
    return max(2 * m + 2, m + 2 + spread)


class ContextDistributions:
    """p and q for a context, deterministic in (seed, context).

    The synthetic pair never emits EOS: its sequences run to the token budget,
    which keeps throughput measurements free of length effects.
    """

    def __init__(self, config: SyntheticPairConfig) -> None:
        self.config = config
        self.support = support_size(config.rates)
        mixing = mixing_rates(config.rates)
        self.mode_cap = 0.9 * (1.0 - max(mixing)) / max(mixing) if mixing else 1.0
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

    def rows(self, context: tuple[int, ...], coin: float | None = None,
             position: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(p, q) as float32 rows of width vocab_size, q for the ``position``-th draft of a
        block (p does not depend on it); ``coin`` (uniform in [0, 1)) decides q's greedy
        agreement, drawn from the context where none is given."""
        a, m, vocab = self.config.rate_at(position), self.support, self.config.vocab_size
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
        self.block_start: int | None = None        # index of a draft block's first token

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
                rows.append(self.model.row(context, distributions.coin(self.chains[-1]),
                                           self.position(len(self.history))))
        sleep_until(started + self.model.latency.seconds(len(ids)))
        return np.stack(rows) if all_rows else rows[-1]

    def position(self, index: int) -> int:
        """Position in the current block of the token at ``index`` (1 outside a block)."""
        if self.block_start is None or index < self.block_start:
            return 1
        return index - self.block_start + 1

    def start_block(self, length: int) -> None:
        self.block_start = length

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

    def row(self, context: tuple[int, ...], coin: float | None = None,
            position: int = 1) -> np.ndarray:
        p, q = self.distributions.rows(context, coin, position)
        return p if self.role == "target" else q

    def session(self, sampling: SamplingConfig) -> SyntheticSession:
        if sampling.reshapes:
            raise ValueError("the synthetic pair samples its own distributions as they are: "
                             "temperature, top_k and top_p must keep their defaults")
        return SyntheticSession(self)
