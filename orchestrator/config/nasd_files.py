"""NASD's files: the calibration ``orchestrator calibrate`` measures, and the RTT -> K table
built from it.

- The calibration (YAML, ``CalibrationFile``): what was measured for a model pair, a
  payload codec and a host: the draft's time per token, t_verify(K) for K = 0..k_max,
  the cloud's plain decoding step, edge and cloud prefill per prompt length (each a mean
  with a 95 % interval), bytes on the wire per cycle at each K, and the acceptance (pooled
  and counted per position).  ``CalibrationFile.calibration`` turns it into the
  controller's ``nasd.estimator.Calibration``.
- The table (CSV, ``write_table`` / ``load_rtt_table``): one row per grid RTT, comment
  lines first (``#``) saying what it was built from; columns are ``nasd.table.TableRow``'s.

Loading either checks it once (parses, fields, K in the job's range) and fails with a
one-line ``ConfigError``.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nasd.analytic import ComputeTimes
from nasd.estimator import Calibration, DecayedLine, Line, physical_draft_line
from nasd.table import RttTable, TableRow
from orchestrator.config.loading import (
    MAX_DATA_BYTES,
    ConfigError,
    describe_validation_error,
    read_text,
    read_yaml,
)

NonNegative = Annotated[float, Field(ge=0.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Interval(_Strict):
    """A measured figure: its mean over ``n`` samples and a 95 % interval (NaN: too few, as
    ``--repetitions 1`` gives each prefill)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=True)
    mean: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    low: float
    high: float
    n: int = Field(ge=1)


class SecondsAtK(_Strict):
    k: int = Field(ge=0)
    seconds: Interval          # a stage's time in cycles of k drafts


class PrefillAtLength(_Strict):
    prompt_tokens: int = Field(ge=1)
    edge_s: Interval           # the draft's prefill
    cloud_s: Interval          # the target's prefill and first token


class BytesAtK(_Strict):
    k: int = Field(ge=0)
    cycles: int = Field(ge=1)
    up: NonNegative            # mean ZMTP bytes of the draft message
    down: NonNegative          # mean ZMTP bytes of the verdict


class PositionCounts(_Strict):
    position: int = Field(ge=1)
    reached: int = Field(ge=0)     # cycles that tested a draft at this position
    accepted: int = Field(ge=0)    # ... and accepted it
    rate: Annotated[float, Field(ge=0.0, le=1.0)] | None   # accepted / reached; None: never

    @model_validator(mode="after")
    def _counts(self) -> "PositionCounts":
        if self.accepted > self.reached:
            raise ValueError(f"position {self.position}: accepted exceeds reached")
        return self


class Acceptance(_Strict):
    rate: float = Field(ge=0.0, le=1.0)    # pooled: accepted / (accepted + rejections)
    low: float
    high: float
    accepted: int = Field(ge=0)            # drafts accepted, all cycles
    rejections: int = Field(ge=0)          # cycles that ended on a rejected draft
    positions: list[PositionCounts]


class CalibrationFile(_Strict):
    model_pair: str
    codec: str
    decoding: str
    host: dict[str, str]
    created: str
    k_max: int = Field(ge=1)
    draft_token_s: Interval                # drafting per drafted token, all K together
    decode_s: Interval                     # cloud-only: one plain target decoding step
    verify: list[SecondsAtK] = Field(min_length=2)  # the target scoring k + 1 positions
    # a cycle's drafting at each K (the draft message built and sent included); None in
    # files written before it was measured: then draft_token_s per token, nothing per cycle
    draft: list[SecondsAtK] | None = None
    prefill: list[PrefillAtLength]
    bytes: list[BytesAtK] = Field(min_length=1)
    acceptance: Acceptance
    # measured under device emulation: its ``DeviceEmulation.identity``; None: this host's own
    emulation: str | None = None

    def calibration(self, seconds_per_byte: float = 0.0) -> Calibration:
        """The controller's stage model: the draft and verify times and the bytes as
        least-squares lines in K (t_verify against the k + 1 positions scored; the draft's
        the mean per token where its line is not a physical one), on a link at
        ``seconds_per_byte``."""
        verify = _line([(row.k + 1, row.seconds.mean) for row in self.verify])
        draft = physical_draft_line(_line([(row.k, row.seconds.mean)
                                           for row in self.draft or []]),
                                    self.draft_token_s.mean)
        times = ComputeTimes(draft_token_s=draft.slope, draft_base_s=draft.intercept,
                             verify_base_s=max(verify.intercept, 0.0),
                             verify_per_token_s=verify.slope, decode_s=self.decode_s.mean)
        return Calibration(self.acceptance.rate, times,
                           bytes_up=_line([(row.k, row.up) for row in self.bytes]),
                           bytes_down=_line([(row.k, row.down) for row in self.bytes]),
                           seconds_per_byte=seconds_per_byte)


def _line(points: list[tuple[float, float]]) -> Line:
    fit = DecayedLine(memory=1.0)    # no forgetting: plain least squares
    for x, y in points:
        fit.add(x, y)
    return fit.fit()


def write_calibration(path: Path, calibration: CalibrationFile) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(calibration.model_dump(mode="json"), sort_keys=False))


def load_calibration(path: Path) -> CalibrationFile:
    try:
        return CalibrationFile.model_validate(read_yaml(path))
    except ValidationError as error:
        raise ConfigError(f"{path}: {describe_validation_error(error)}") from None


COLUMNS = tuple(field.name for field in dataclasses.fields(TableRow))


def write_table(path: Path, table: RttTable, comments: list[str]) -> None:
    """The table as CSV, ``comments`` as ``#`` lines above the header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        for line in comments:
            file.write(f"# {line}\n")
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for row in table.rows:
            writer.writerow([f"{value:.6g}" if isinstance(value, float) else value
                             for value in dataclasses.astuple(row)])


EMULATION_COMMENT = "emulation: "   # a table's comment line naming the emulation it is for


def check_emulation(path: Path, recorded: str | None, emulation: str | None) -> None:
    """A ``ConfigError`` unless the file at ``path`` was measured under the device
    ``emulation`` a run uses (an identity, None: this host's own devices)."""
    if recorded != emulation:
        def what(identity: str | None) -> str:
            return "this host's own devices" if identity is None else f"emulating {identity}"
        raise ConfigError(f"{path}: measured for {what(recorded)}, but the run is for "
                          f"{what(emulation)}: calibrate with the run's job (`orchestrator "
                          "calibrate --job ...`)")


def load_rtt_table(path: Path, k_min: int, k_max: int,
                   emulation: str | None = None) -> RttTable:
    """The table at ``path``, every K of it within [k_min, k_max], built for the device
    ``emulation`` given (its ``# emulation:`` line; else a ``ConfigError``)."""
    lines = read_text(path, MAX_DATA_BYTES).splitlines()
    recorded = next((line.split(EMULATION_COMMENT, 1)[1].strip() for line in lines
                     if line.startswith(f"# {EMULATION_COMMENT}")), None)
    check_emulation(path, recorded, emulation)
    reader = csv.DictReader(line for line in lines if line and not line.startswith("#"))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ConfigError(f"{path}: not an RTT -> K table: expected the columns "
                          f"{','.join(COLUMNS)}")
    try:
        rows = tuple(TableRow(**{name: (_integer if name in ("k", "spec_k") else float)(value)
                                 for name, value in record.items()})
                     for record in reader)
        return RttTable(rows, k_min, k_max)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path}: {error}") from None


def _integer(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError(f"expected a whole K, got {text}")
    return int(value)
