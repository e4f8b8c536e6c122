"""Task accuracy: reading the answer out of a model's output and scoring it (pure functions).

* Multiple choice (MMLU): the prompt ends with ``"Answer:"``, so the answer is
  the letter the output starts with: ``" B"``, ``"(C)"``, ``"D."``, ``"A\\n"``.
  An output that starts with a word (``" Because"``) answered nothing.  Like
  the original MMLU evaluation, which reads the first token, a leading
  article ``" A dog..."`` counts as the letter A.
* Free-form: a numeric expected answer (GSM8K, the arithmetic prompt sets)
  is compared with the output's final number, GSM8K's convention: the number
  after ``####`` when the output has one, else the last number in the text
  (``" 47 plus 38 is 85.\\n"`` -> ``"85"``).  Text before a following
  ``"\\nQuestion:"`` only is read, in case the model went on to invent the
  next example.  Numbers are normalised (``"1,234"`` -> ``"1234"``,
  ``"5.0"`` -> ``"5"``, ``"-0"`` -> ``"0"``).  A non-numeric expected answer is
  an exact match of the stripped output.
"""

from __future__ import annotations

import math
import re
from typing import Iterable

_CHOICE = re.compile(r"\s*\(?([ABCD])(?=$|[).\s])")
# A sign only where it is not a hyphen ("pages 10-12"); thousands groups of
# exactly three digits; a fraction only with digits after the point ("85." is 85).
_NUMBER = re.compile(r"(?:(?<![\w-])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_NEXT_EXAMPLE = "\nQuestion:"


def extract_choice(text: str) -> str | None:
    """The letter A-D the output starts with (after whitespace and an optional "("), or None."""
    found = _CHOICE.match(text)
    return found.group(1) if found else None


def normalise_number(number: str) -> str:
    """``"1,234.50"`` -> ``"1234.5"``, ``"5.0"`` -> ``"5"``, ``"-007"`` -> ``"-7"``, ``"-0"`` -> ``"0"``."""
    text = number.replace(",", "").strip()
    sign = "-" if text.startswith("-") else ""
    whole, _, fraction = text.lstrip("+-").partition(".")
    whole = whole.lstrip("0") or "0"
    fraction = fraction.rstrip("0")
    body = f"{whole}.{fraction}" if fraction else whole
    return body if body == "0" else sign + body


def extract_final_number(text: str) -> str | None:
    """The answer number of a free-form output (GSM8K convention), normalised, or None."""
    text = text.split(_NEXT_EXAMPLE, 1)[0]
    if "####" in text:
        found = _NUMBER.search(text.split("####", 1)[1])
        return normalise_number(found.group(0)) if found else None
    numbers = _NUMBER.findall(text)
    return normalise_number(numbers[-1]) if numbers else None


def _as_number(text: str) -> str | None:
    """``text`` as a normalised number when it is one number (commas allowed), else None."""
    stripped = text.strip().replace(",", "")
    return normalise_number(stripped) if re.fullmatch(r"[-+]?\d+(?:\.\d+)?", stripped) else None


def is_correct(prompt_kind: str, expected: str, output_text: str) -> bool:
    """Whether ``output_text`` answers a ``prompt_kind`` prompt whose answer is ``expected``."""
    if prompt_kind == "multiple-choice":
        return extract_choice(output_text) == expected.strip().upper()
    if prompt_kind == "free":
        number = _as_number(expected)
        if number is not None:
            return extract_final_number(output_text) == number
        return output_text.strip() == expected.strip()
    raise ValueError(f"unknown prompt kind {prompt_kind!r} (expected free or multiple-choice)")


def accuracy(correct: Iterable[bool]) -> float:
    """The fraction of True; NaN when there is nothing to score."""
    values = [bool(value) for value in correct]
    return sum(values) / len(values) if values else math.nan
