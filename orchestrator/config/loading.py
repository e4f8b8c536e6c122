"""Finding and loading the shipped YAML (profiles, model pairs, jobs, prompts, devices).

A name is looked up under ``configs/<kind>/`` (sub-folders included); a
path is read as given.  Every failure becomes a ``ConfigError`` whose text is
one line naming the file (or the flag) and the field, which the CLI prints with
exit code 2.

This is where every config is validated, once, as it loads: a file is read only
if it is a regular file of bounded size (``read_text``: ``trace: /dev/zero`` is
refused, not read), as YAML without duplicate keys, nesting deeper than
``MAX_YAML_DEPTH`` or more than ``MAX_YAML_NODES`` nodes with aliases expanded
(``ConfigLoader``); then against its schema, whose fields declare every range
(``shaping.profile``, ``orchestrator.config.job``, ``agents.backends``,
``nasd.latency.roofline``).  Command-line flags that override fields go through
the same schema and are blamed by name (``load_job``, ``load_profile``).
"""

from __future__ import annotations

import difflib
import importlib.resources
import io
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import TypeAdapter, ValidationError
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from agents.backends import ModelPairConfig
from agents.backends.hf import (
    HFPairConfig,
    ModelNotAvailable,
    check_available,
    resolve_paths,
)
from nasd.latency.roofline import Device
from nasd.latency.stages import DTYPE_BYTES, required_columns, shape_columns, shape_of
from orchestrator.config.job import JobConfig
from shaping.profile import MAX_TRACE_BYTES, NetworkProfile, ProfileFile, parse_trace, resolve

# the ``configs`` package (a folder: pip installs packages unzipped)
CONFIG_DIR = Path(str(importlib.resources.files("configs")))

# The most a config file may hold.  No shipped config comes near: they bound what
# a typo or a hostile file can make the orchestrator read, parse and hold.
MAX_CONFIG_BYTES = 1 << 20          # a YAML file (1 MiB parses in about 4 s)
MAX_DATA_BYTES = 64 << 20           # a prompt set, a latency table, an RTT -> K table
MAX_YAML_DEPTH = 32                 # nested collections (the schemas need 6)
MAX_YAML_NODES = 1_000_000          # scalars and collections, aliases expanded


class ConfigError(ValueError):
    """Bad user input: a one-line message naming the file and field."""


def describe_validation_error(error: ValidationError) -> str:
    """``<field path>: <what is wrong>`` of the first error (and how many more there are);
    an error of the whole file (a check across its fields) says what is wrong only."""
    where, message = first_error(error)
    return f"{where}: {message}" if where else message


def first_error(error: ValidationError) -> tuple[str, str]:
    """(where: the first error's dotted field path, empty for the whole file; what is
    wrong)."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    # the value, unless the message already names it (a validator of our own may)
    if "input" in first and not isinstance(first["input"], (dict, list)) \
            and repr(first["input"]) not in message:
        message += f" (got {first['input']!r})"
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return where, message + more


def find(kind: str, name_or_path: str, suffix: str = ".yaml") -> Path:
    """The file for ``name_or_path``, absolute: an existing path, a shipped config by name
    (``4g``, or with its sub-folder, ``grid/rtt050-bw010``), or else ``NAME.yaml`` in the
    current folder (where ``orchestrator latency device`` writes one)."""
    path = Path(name_or_path)
    if path.is_file():
        return path.resolve()
    folder = CONFIG_DIR / kind
    shipped = folder / (name_or_path if path.suffix else name_or_path + suffix)
    if shipped.is_file():
        return shipped
    local = Path(name_or_path + suffix)
    if not path.suffix and local.is_file():
        return local.resolve()
    if path.is_dir():
        raise ConfigError(f"{name_or_path}: a folder, not a {kind[:-1]} file")
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


def read_text(path: Path, limit_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of the regular file ``path``, refused beyond ``limit_bytes``: a device,
    a pipe or a huge file is never read whole."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file" if not path.exists()
                          else f"{path}: not a regular file")
    try:
        with path.open("rb") as file:
            data = file.read(limit_bytes + 1)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    if len(data) > limit_bytes:
        raise ConfigError(f"{path}: larger than the {limit_bytes >> 10} KiB a file of this "
                          "kind may hold")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None


class ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing what no config needs: a key given twice in one mapping,
    collections nested deeper than ``MAX_YAML_DEPTH`` (the composer recurses: 20,000 levels
    exhaust Python's stack) and more than ``MAX_YAML_NODES`` nodes once aliases are expanded
    (a few lines of nested aliases stand for billions of nodes)."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._composed: dict[int, int] = {}   # id of each node composed -> its expanded size

    def compose_node(self, parent, index):
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self._composed:
                raise ComposerError(None, None, "an alias inside the node it names", mark)
            self._count(self._composed[id(node)], mark)
            return node
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
        before = self._nodes
        self._count(1, mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._composed[id(node)] = self._nodes - before
        return node

    def _count(self, nodes: int, mark) -> None:
        self._nodes += nodes
        if self._nodes > MAX_YAML_NODES:
            raise ComposerError(None, None, f"more than {MAX_YAML_NODES:,} values (aliases "
                                "expanded)", mark)

    def construct_mapping(self, node, deep=False):
        lines: dict = {}              # each key -> the line it is on
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":     # ``<<: *base`` may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = lines.get(key)
            except TypeError:         # unhashable: the safe loader says so itself
                break
            if first is not None:
                raise ConstructorError(None, None, f"duplicate key {key!r} (first on line "
                                       f"{first})", key_node.start_mark)
            lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> dict:
    text = read_text(path)
    try:
        data = yaml.load(text, Loader=ConfigLoader)
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
         "nasd_rtt_table_path": "--nasd-rtt-table", "nasd_calibration_path": "--nasd-calibration",
         "guardrail_path": "--guardrail"}
JOB_PATHS = ("nasd_rtt_table_path", "nasd_calibration_path", "guardrail_path")   # naming files


def flag(field: str) -> str:
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def named(field: str) -> str:
    """``edge_device (--edge-device)``: a job field as the file and the command line call it."""
    return f"{field} ({flag(field)})"


def _flags_text(given: dict, flags: dict[str, str] | None = None) -> str:
    """The flags that gave ``given``, as typed: ``flags`` names a command's own, where they
    differ from ``run``'s (``flag``); a switch is ``--name`` or ``--no-name``."""
    def typed(field: str, value) -> str:
        name = (flags or {}).get(field) or flag(field)
        if isinstance(value, bool):
            return name if value else f"--no-{name.removeprefix('--')}"
        return f"{name} {' '.join(map(str, value)) if isinstance(value, list) else value}"
    return " ".join(typed(field, value) for field, value in given.items())


def load_job(name_or_path: str, overrides: dict | None = None,
             flags: dict[str, str] | None = None) -> JobConfig:
    """A validated job; ``overrides`` (None or [] meaning 'keep the file's') win over the file.
    ``flags``: the command's own flag for a field, where it is not ``run``'s (an error names
    the flag the user typed)."""
    path = find("jobs", name_or_path)
    data, given = read_yaml(path), _without_unset(overrides)
    for field in JOB_PATHS:   # relative: to the job file's folder, or to here for a flag
        if field in data and field not in given and data[field] is not None:
            data[field] = str(path.parent / str(data[field]))
    given.update({field: str(Path(given[field]).resolve()) for field in JOB_PATHS
                  if field in given})
    return _validate_with_flags(JobConfig, data, given, path, "job", flags)


def _validate_with_flags(schema: Any, data: dict, given: dict, path: Path, kind: str,
                         flags: dict[str, str] | None = None) -> Any:
    """``data`` (the ``kind`` file ``path``'s) with the flags' values ``given`` laid over it, as
    ``schema``.  An error is blamed on the flags when they cause it: on the flag of the
    failing field, or, when the file alone is valid (a conflict between the flags and the
    file, e.g. ``--decoding sampling --codec ids``), on the flags without which the same
    error goes away (each other flag left out, one at a time, as long as it stays)."""
    try:
        return TypeAdapter(schema).validate_python({**data, **given})
    except ValidationError as error:
        where, message = first_error(error)
        field = where.split(".")[0]
        if field in given:
            raise ConfigError(f"{_flags_text({field: given[field]}, flags)}: {message}") from None
        if given and _error(schema, data) is None:
            blamed = dict(given)
            for name in given:
                rest = {other: value for other, value in blamed.items() if other != name}
                if _error(schema, {**data, **rest}) == (where, message):
                    blamed = rest
            raise ConfigError(f"{_flags_text(blamed, flags)} (with {kind} {path}): {message}") \
                from None
        raise ConfigError(f"{path}: {describe_validation_error(error)}") from None


def _error(schema: Any, data: dict) -> tuple[str, str] | None:
    """``data``'s first error as ``schema`` (``first_error``), None when it is valid."""
    try:
        TypeAdapter(schema).validate_python(data)
    except ValidationError as error:
        return first_error(error)
    return None


def load_profile(name_or_path: str, overrides: dict | None = None) -> NetworkProfile:
    """A resolved network profile; ``overrides`` are shorthands laid over the file, and a
    ``trace`` file is read here (bounded: ``MAX_TRACE_BYTES``)."""
    path = find("profiles", name_or_path)
    raw = _validate_with_flags(ProfileFile, read_yaml(path), _without_unset(overrides),
                               path, "profile")
    trace = None
    if raw.trace is not None:
        trace_path = path.parent / raw.trace       # an absolute trace path stays as it is
        try:
            trace = parse_trace(read_text(trace_path, MAX_TRACE_BYTES), str(trace_path))
        except ValueError as error:      # a ConfigError too: unreadable, too large
            raise ConfigError(f"{path}: trace: {error}") from None
    try:
        return resolve(raw, name=path.stem, trace=trace)
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


def foreign_table(table: pd.DataFrame, device: Device) -> str | None:
    """A warning when ``device`` is not the machine ``table`` was measured on: a measured
    device file (one ``orchestrator latency device`` wrote) naming another processor, or a
    datasheet's device (none measured it): its peaks would scale another machine's times.
    None when they agree or the table does not say."""
    column = table["host_processor"].dropna() if "host_processor" in table else ()
    if not len(column):
        return None
    measured = (device.measured or {}).get("host", {}).get("processor")
    if measured == column.iloc[0]:
        return None
    where = f"on {measured}" if measured else "from a datasheet, not measured on a host"
    return (f"the table was measured on {column.iloc[0]}, device {device.name} is {where}: "
            "its peaks would scale another machine's times")


def unmeasured_library_cost(table: pd.DataFrame, device: Device) -> str | None:
    """A note when a measured device file (of the table's own machine or not) says nothing
    of what a GEMM library call costs at the table's 16-bit dtype: a file from before
    ``orchestrator latency device`` measured it."""
    unmeasured = sorted(set(table["dtype"]) - {"float32"} - set(device.library_call_us))
    if device.measured is None or not unmeasured:
        return None
    return (f"device {device.name} has no library_call_us for {unmeasured[0]}: the fit counts "
            "no cost for its GEMM library calls, and misjudges model shapes whose small "
            "layers skip the library (`orchestrator latency device`, run on the machine the "
            "table was measured on, measures it)")


def load_latency_table(path: str | Path) -> pd.DataFrame:
    """A table of ``orchestrator latency measure``, checked for the columns the latency
    model reads and for positive stage times."""
    path = Path(path)
    text = read_text(path, MAX_DATA_BYTES)
    try:
        table = pd.read_csv(io.StringIO(text))
    except ValueError as error:
        raise ConfigError(f"{path}: not a readable CSV table: "
                          f"{str(error).strip().splitlines()[0]}") from None
    missing = [column for column in required_columns() if column not in table.columns]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"{path}: missing column {missing[0]!r}{more}; a table of "
                          "`orchestrator latency measure` has them")
    if table.empty:
        raise ConfigError(f"{path}: no samples")
    counts = ["threads", "prompt_tokens", "context_tokens", "k", "repeats",
              *shape_columns("draft"), *shape_columns("target")]
    for column in [*required_columns(), *(["repeats"] if "repeats" in table else [])]:
        if column == "dtype" or column.endswith("tied_embeddings"):
            continue
        values = pd.to_numeric(table[column], errors="coerce")
        if column.endswith("_s"):
            bad = table.index[~(values > 0)]
            needs = "a number > 0"
        elif column in counts:
            bad = table.index[~((values >= 1) & (values % 1 == 0))]
            needs = "a whole number >= 1"
        elif column.startswith("bytes_"):
            bad = table.index[~(values >= 0)]
            needs = "a number >= 0"
        else:
            bad = table.index[values.isna()]
            needs = "a number"
        if len(bad):
            raise ConfigError(f"{path}: row {int(bad[0]) + 2}: {column} must be {needs} "
                              f"(got {table.at[bad[0], column]})")
        table[column] = values
    for index, row in zip(table.index, table.to_dict("records")):
        for role in ("draft", "target"):
            try:
                shape_of(row, role)
            except ValueError as error:
                raise ConfigError(f"{path}: row {int(index) + 2}: {role} shape: {error}") from None
    unknown = table.index[~table["dtype"].isin(list(DTYPE_BYTES))]
    if len(unknown):
        raise ConfigError(f"{path}: row {int(unknown[0]) + 2}: dtype "
                          f"{table.at[unknown[0], 'dtype']!r}: one of {', '.join(DTYPE_BYTES)}")
    for column, what in (("dtype", "dtypes"), ("threads", "torch thread counts"),
                         ("host_processor", "processors")):
        values = table[column].dropna().unique() if column in table else []
        if len(values) > 1:
            second = int(table.index[table[column] == values[1]][0])
            raise ConfigError(f"{path}: row {second + 2}: mixes {what} ({values[0]}, then "
                              f"{values[1]}): a table is one hardware (dtype, threads, host), "
                              "which the latency model does not vary; fit each campaign's "
                              "table on its own (`latency transfer` carries a fit from one "
                              "to another)")
    repeated = table.index[table["sample"].duplicated()]
    if len(repeated):
        sample = table.at[repeated[0], "sample"]
        first = int(table.index[table["sample"] == sample][0])
        raise ConfigError(f"{path}: rows {first + 2} and {int(repeated[0]) + 2}: sample "
                          f"{sample:g} twice: one campaign per table (or renumber the samples)")
    return table
