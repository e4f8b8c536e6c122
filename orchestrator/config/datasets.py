"""Turning dataset files into prompts: JSONL prompt sets (GSM8K style included) and MMLU.

A ``Prompt`` carries the text sent to the model and, where the dataset has
one, the expected answer that ``validation.task_accuracy`` scores the output
against: a letter A-D for multiple choice, text or a number for free-form.

* JSONL: one object a line, ``{"id"?, "prompt" (or "question"), "answer"?,
  "kind"?}``.  An answer holding ``####`` (GSM8K's worked solution) keeps
  only what follows it, so ``"... so 72 in all.\\n#### 72"`` expects ``72``.
* MMLU in its original CSV layout (github.com/hendrycks/test, ``data/``):
  ``dev/<subject>_dev.csv`` holds the few-shot examples and
  ``test/<subject>_test.csv`` the questions; no header row; the columns are
  question, A, B, C, D, answer letter.  Prompts are built exactly as that
  repository's ``evaluate.py`` builds them (``format_subject``,
  ``gen_prompt``, ``format_example``), including its header, ``"The
  following are multiple choice questions (with answers) about
  {subject}.\\n\\n"``, where its ``format_subject`` puts a space before every
  word of the subject, hence two spaces after "about".  Cells are kept as
  the file's text (read as strings, no NA conversion), so "None" or "0.50"
  stay as written.  evaluate.py's cropping of over-long prompts to the
  model's context (fewer shots) is not done here.

Every bad input raises ``ConfigError`` with a one-line message naming the file
(and the line or row).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from orchestrator.config.loading import MAX_DATA_BYTES, ConfigError, find, read_text

KINDS = ("free", "multiple-choice")
CHOICES = ("A", "B", "C", "D")
MMLU_COLUMNS = 1 + len(CHOICES) + 1      # question, A, B, C, D, answer letter


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    answer: str | None = None          # a letter A-D for multiple choice, text/number for free-form
    kind: Literal["free", "multiple-choice"] = "free"


# ---------------------------------------------------------------------------
# JSONL
# ---------------------------------------------------------------------------

def gsm8k_answer(answer: str) -> str:
    """The final answer of a GSM8K solution: the text after ``####``, stripped."""
    return answer.split("####", 1)[1].strip() if "####" in answer else answer.strip()


def load_jsonl_prompts(path: Path) -> list[Prompt]:
    """Prompts from a JSONL file; ids default to the line number."""
    path = Path(path)
    text = read_text(path, MAX_DATA_BYTES)
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{where}: not JSON: {error.msg}") from None
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: each line must be a JSON object")
        key = "prompt" if "prompt" in item else "question"
        prompt = item.get(key)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"{where}: each line needs a non-empty \"prompt\" "
                              f"(or \"question\") string")
        answer = item.get("answer")
        if answer is not None:
            if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
                raise ConfigError(f"{where}: \"answer\" must be a string or a number")
            answer = gsm8k_answer(str(answer))
        kind = item.get("kind", "free")
        if kind not in KINDS:
            raise ConfigError(f"{where}: \"kind\" must be one of {', '.join(KINDS)} (got {kind!r})")
        if kind == "multiple-choice" and answer not in CHOICES:
            raise ConfigError(f"{where}: a multiple-choice answer must be one of "
                              f"{', '.join(CHOICES)} (got {answer!r})")
        prompt_id = str(item.get("id", number))
        if prompt_id in seen:
            raise ConfigError(f"{where}: duplicate id {prompt_id!r}")
        seen.add(prompt_id)
        prompts.append(Prompt(id=prompt_id, prompt=prompt, answer=answer, kind=kind))
    if not prompts:
        raise ConfigError(f"{path}: no prompts")
    return prompts


# ---------------------------------------------------------------------------
# MMLU (hendrycks/test layout and prompt format)
# ---------------------------------------------------------------------------

def format_subject(subject: str) -> str:
    """evaluate.py's ``format_subject``: every word preceded by a space."""
    return "".join(" " + word for word in subject.split("_"))


def mmlu_header(subject: str) -> str:
    return ("The following are multiple choice questions (with answers) about "
            f"{format_subject(subject)}.\n\n")


def format_example(row: list[str], include_answer: bool = True) -> str:
    """evaluate.py's ``format_example`` for one CSV row."""
    text = row[0]
    for letter, choice in zip(CHOICES, row[1:1 + len(CHOICES)]):
        text += f"\n{letter}. {choice}"
    text += "\nAnswer:"
    if include_answer:
        text += f" {row[-1]}\n\n"
    return text


def _read_mmlu_csv(path: Path) -> list[list[str]]:
    """The rows of one MMLU CSV as strings, the answer letter checked."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False,
                            encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{path}: no rows") from None
    except pd.errors.ParserError as error:
        detail = str(error).strip().splitlines()[-1]
        found = re.search(r"Expected \d+ fields in line \d+, saw \d+", detail)
        raise ConfigError(f"{path}: not a valid MMLU CSV: "
                          f"{found.group(0) if found else detail}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    if frame.shape[1] != MMLU_COLUMNS:
        raise ConfigError(f"{path}: has {frame.shape[1]} columns, expected {MMLU_COLUMNS} "
                          f"(question, A, B, C, D, answer letter; no header row)")
    if frame.empty:
        raise ConfigError(f"{path}: no rows")
    rows = []
    for index, values in enumerate(frame.itertuples(index=False, name=None)):
        row = list(values)
        row[-1] = row[-1].strip()
        if row[-1] not in CHOICES:
            hint = " (a missing field?)" if row[-1] == "" else ""
            raise ConfigError(f"{path}: row {index + 1}: the answer must be one of "
                              f"{', '.join(CHOICES)} (got {row[-1]!r}){hint}")
        rows.append(row)
    return rows


def mmlu_subjects(data_dir: Path) -> list[str]:
    """The subjects with a ``test/<subject>_test.csv`` file, sorted."""
    test_dir = Path(data_dir) / "test"
    if not test_dir.is_dir():
        raise ConfigError(f"{test_dir}: no such folder (expected the MMLU layout "
                          f"dev/<subject>_dev.csv, test/<subject>_test.csv)")
    subjects = sorted(p.name[:-len("_test.csv")] for p in test_dir.glob("*_test.csv"))
    if not subjects:
        raise ConfigError(f"{test_dir}: no <subject>_test.csv files")
    return subjects


def load_mmlu(data_dir: Path, subjects: list[str] | None = None, shots: int = 5,
              max_per_subject: int | None = None) -> list[Prompt]:
    """MMLU test questions as ``shots``-shot prompts, subject by subject in file order.

    ``subjects`` None means every subject under ``test/``; ``max_per_subject``
    keeps the first N test rows of each.  Ids are ``<subject>/<row index>``
    (0-based, the row in the test CSV).
    """
    data_dir = Path(data_dir)
    if shots < 0:
        raise ConfigError(f"{data_dir}: shots must be >= 0 (got {shots})")
    if max_per_subject is not None and max_per_subject < 1:
        raise ConfigError(f"{data_dir}: max_per_subject must be >= 1 (got {max_per_subject})")
    if subjects is None:
        subjects = mmlu_subjects(data_dir)
    elif not subjects:
        raise ConfigError(f"{data_dir}: no subjects given")
    prompts: list[Prompt] = []
    for subject in subjects:
        test_path = data_dir / "test" / f"{subject}_test.csv"
        dev_path = data_dir / "dev" / f"{subject}_dev.csv"
        if not test_path.is_file():
            known = ", ".join(mmlu_subjects(data_dir)[:8])
            raise ConfigError(f"{test_path}: no such file (subject {subject!r}; "
                              f"subjects here include {known})")
        header = mmlu_header(subject)
        if shots:
            dev_rows = _read_mmlu_csv(dev_path)
            if len(dev_rows) < shots:
                raise ConfigError(f"{dev_path}: has {len(dev_rows)} examples, "
                                  f"fewer than the {shots} shots asked for")
            header += "".join(format_example(row) for row in dev_rows[:shots])
        test_rows = _read_mmlu_csv(test_path)
        for index, row in enumerate(test_rows[:max_per_subject]):
            prompts.append(Prompt(id=f"{subject}/{index}",
                                  prompt=header + format_example(row, include_answer=False),
                                  answer=row[-1], kind="multiple-choice"))
    return prompts


# ---------------------------------------------------------------------------
# One spec string for the CLI and job files
# ---------------------------------------------------------------------------

def load_dataset(spec: str, *, shots: int = 5,
                 max_per_subject: int | None = None) -> list[Prompt]:
    """Prompts for ``spec``: a shipped prompt set name, a ``.jsonl`` path, or MMLU.

    MMLU is ``mmlu:<dir>`` or ``mmlu:<dir>:<subject>,<subject>``; ``shots``
    and ``max_per_subject`` apply to MMLU only.
    """
    if spec.startswith("mmlu:"):
        rest = spec[len("mmlu:"):]
        subjects = None
        head, sep, tail = rest.rpartition(":")
        if sep and re.fullmatch(r"[\w,]*", tail):
            rest = head
            subjects = [s for s in tail.split(",") if s]
            if not subjects:
                raise ConfigError(f"{spec}: no subjects after the last ':'")
        if not rest:
            raise ConfigError(f"{spec}: give the MMLU folder, as mmlu:<dir>[:subject,...]")
        return load_mmlu(Path(rest), subjects, shots=shots, max_per_subject=max_per_subject)
    if Path(spec).is_dir():
        raise ConfigError(f"{spec}: is a folder; for MMLU write mmlu:{spec}")
    return load_jsonl_prompts(find("prompts", spec, suffix=".jsonl"))
