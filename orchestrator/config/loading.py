"""Finding and loading the shipped YAML (profiles, model pairs, jobs, prompts, devices).

A name is looked up under ``configs/<kind>/`` (sub-folders included); a
path is read as given.  Every failure becomes a ``ConfigError`` whose text is
one line naming the file and the field, which the CLI prints with exit code 2.
"""

from __future__ import annotations

import difflib
import importlib.resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import TypeAdapter, ValidationError

from agents.backends import ModelPairConfig
from agents.backends.hf import (
    HFPairConfig,
    ModelNotAvailable,
    check_available,
    resolve_paths,
)
from nasd.latency.roofline import Device
from nasd.latency.stages import required_columns
from orchestrator.config.job import JobConfig
from shaping.profile import NetworkProfile, ProfileFile, resolve

# the ``configs`` package (a folder: pip installs packages unzipped)
CONFIG_DIR = Path(str(importlib.resources.files("configs")))


class ConfigError(ValueError):
    """Bad user input: a one-line message naming the file and field."""


def describe_validation_error(error: ValidationError) -> str:
    """``<field path>: <what is wrong>`` of the first error (and how many more there are)."""
    return ": ".join(first_error(error))


def first_error(error: ValidationError) -> tuple[str, str]:
    """(where: the first error's dotted field path or ``(top level)``, what is wrong)."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    # the value, unless the message already names it (a validator of our own may)
    if "input" in first and not isinstance(first["input"], (dict, list)) \
            and repr(first["input"]) not in message:
        message += f" (got {first['input']!r})"
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return where, message + more


def find(kind: str, name_or_path: str, suffix: str = ".yaml") -> Path:
    """The file for ``name_or_path``, absolute: an existing path, or a shipped config by name
    (``4g``, or with its sub-folder, ``grid/rtt050-bw010``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path.resolve()
    folder = CONFIG_DIR / kind
    shipped = folder / (name_or_path if path.suffix else name_or_path + suffix)
    if shipped.is_file():
        return shipped
    if path.suffix or "/" in name_or_path:
        raise ConfigError(f"{name_or_path}: no such file")
    matches = sorted(folder.rglob(f"{name_or_path}{suffix}"))
    if not matches:
        raise ConfigError(_not_found(kind, name_or_path, suffix))
    return matches[0]


def _not_found(kind: str, name: str, suffix: str) -> str:
    """'<kind> <name> not found', the closest shipped names, and every shipped name (each
    sub-folder's as a count and range)."""
    folder = CONFIG_DIR / kind
    close = difflib.get_close_matches(name, available(kind, suffix), n=3, cutoff=0.6)
    guess = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    names = ", ".join(sorted(p.stem for p in folder.glob(f"*{suffix}")))
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        inside = sorted(p.stem for p in sub.rglob(f"*{suffix}"))
        if inside:
            names += f", or one of the {len(inside)} in {sub.name}/ ({inside[0]} ... {inside[-1]})"
    listing = "; `orchestrator profiles` lists them all" if kind == "profiles" else ""
    return f"{kind[:-1]} {name!r} not found: {guess}give a path or one of {names}{listing}"


def available(kind: str, suffix: str = ".yaml") -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / kind).rglob(f"*{suffix}"))


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML: "
                          f"{getattr(error, 'problem', None) or error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level")
    return data


def parse(schema: Any, data: dict, source: str) -> Any:
    """``data`` as ``schema`` (a model class or an annotated union), or a ConfigError."""
    try:
        return TypeAdapter(schema).validate_python(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {describe_validation_error(error)}") from None


def _without_unset(overrides: dict | None) -> dict:
    return {key: value for key, value in (overrides or {}).items() if value not in (None, [])}


# The command-line flag that overrides a job field, where it is not --<field-name>.
FLAGS = {"strategies": "--strategy", "k_values": "--k", "max_queries": "--queries",
         "nasd_rtt_table_path": "--nasd-rtt-table", "nasd_calibration_path": "--nasd-calibration"}
JOB_PATHS = ("nasd_rtt_table_path", "nasd_calibration_path")   # job fields naming files


def flag(field: str) -> str:
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def _flags_text(given: dict) -> str:
    return " ".join(f"{flag(field)} {' '.join(map(str, value)) if isinstance(value, list) else value}"
                    for field, value in given.items())


def load_job(name_or_path: str, overrides: dict | None = None) -> JobConfig:
    """A validated job; ``overrides`` (None or [] meaning 'keep the file's') win over the file.

    An error is blamed on the flags when they cause it: on the flag of the failing field,
    or on every flag given when the file alone is valid (a conflict between the flags and
    the file, e.g. ``--decoding sampling --codec ids``).
    """
    path = find("jobs", name_or_path)
    data, given = read_yaml(path), _without_unset(overrides)
    for field in JOB_PATHS:   # relative: to the job file's folder, or to here for a flag
        if field in data and field not in given and data[field] is not None:
            data[field] = str(path.parent / str(data[field]))
    given.update({field: str(Path(given[field]).resolve()) for field in JOB_PATHS
                  if field in given})
    try:
        return TypeAdapter(JobConfig).validate_python({**data, **given})
    except ValidationError as error:
        where, message = first_error(error)
        field = where.split(".")[0]
        if field in given:
            raise ConfigError(f"{_flags_text({field: given[field]})}: {message}") from None
        if given and _valid(JobConfig, data):
            raise ConfigError(f"{_flags_text(given)} (with job {path}): {message}") from None
        raise ConfigError(f"{path}: {where}: {message}") from None


def _valid(schema: Any, data: dict) -> bool:
    try:
        TypeAdapter(schema).validate_python(data)
    except ValidationError:
        return False
    return True


def load_profile(name_or_path: str, overrides: dict | None = None) -> NetworkProfile:
    """A resolved network profile; ``overrides`` are shorthands laid over the file."""
    path = find("profiles", name_or_path)
    data = {**read_yaml(path), **_without_unset(overrides)}
    raw = parse(ProfileFile, data, str(path))
    try:
        return resolve(raw, name=path.stem, base_dir=path.parent)
    except ValidationError as error:
        raise ConfigError(f"{path}: {describe_validation_error(error)}") from None
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None


def load_model_pair(name_or_path: str) -> ModelPairConfig:
    """A validated pair; for ``hf``, local folders resolved and every model checked present."""
    path = find("models", name_or_path)
    pair = parse(ModelPairConfig, read_yaml(path), str(path))
    if isinstance(pair, HFPairConfig):
        pair = resolve_paths(pair, path.parent)
        try:
            check_available(pair)
        except ModelNotAvailable as error:
            raise ConfigError(f"{path}: {error}") from None
    return pair


def load_device(name_or_path: str) -> Device:
    """A validated device file (``nasd.latency.roofline.Device``): a name under
    ``configs/devices`` or a path."""
    path = find("devices", name_or_path)
    return parse(Device, read_yaml(path), str(path))


def load_latency_table(path: str | Path) -> pd.DataFrame:
    """A table of ``orchestrator latency measure``, checked for the columns the latency
    model reads and for positive stage times."""
    path = Path(path)
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: not a readable CSV table: {error}") from None
    missing = [column for column in required_columns() if column not in table.columns]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"{path}: missing column {missing[0]!r}{more}; a table of "
                          "`orchestrator latency measure` has them")
    if table.empty:
        raise ConfigError(f"{path}: no samples")
    for column in (c for c in required_columns() if c.endswith("_s")):
        bad = table.index[~(table[column] > 0)]
        if len(bad):
            raise ConfigError(f"{path}: row {int(bad[0]) + 2}: {column} must be > 0 "
                              f"(got {table.at[bad[0], column]!r})")
    return table
