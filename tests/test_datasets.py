"""Dataset loaders (orchestrator/config/datasets.py) and answer scoring (validation/task_accuracy.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from orchestrator.config.datasets import (
    Prompt,
    load_dataset,
    load_jsonl_prompts,
    load_mmlu,
)
from orchestrator.config.loading import ConfigError
from validation.task_accuracy import (
    accuracy,
    extract_choice,
    extract_final_number,
    is_correct,
)

MMLU = Path(__file__).resolve().parent / "fixtures" / "mmlu"

# hendrycks/test evaluate.py: gen_prompt(dev_df, subject, 5) + format_example(test_df, 0, False).
# Its format_subject puts a space before every word, hence "about  high".
EXPECTED_MATH_0 = (
    "The following are multiple choice questions (with answers) about  high school mathematics.\n\n"
    "What is the value of 3x + 2 when x = 4?\nA. 10\nB. 12\nC. 14\nD. 16\nAnswer: C\n\n"
    "If f(x) = x^2 - 1, what is f(3)?\nA. 6\nB. 8\nC. 9\nD. 10\nAnswer: B\n\n"
    "How many prime numbers are less than 20?\nA. 6\nB. 7\nC. 8\nD. 9\nAnswer: C\n\n"
    "What is the slope of the line through (0, 0) and (2, 6)?\nA. 2\nB. 3\nC. 6\nD. 12\n"
    "Answer: B\n\n"
    " The interior angles of a triangle add up to how many degrees?\nA. 90\nB. 180\nC. 270\n"
    "D. 360\nAnswer: B\n\n"
    'A student writes the system "x + y = 10, x - y = 4".\nWhat is x?\n'
    "A. 3\nB. 6\nC. 7\nD. 14\nAnswer:"
)


# --- MMLU -------------------------------------------------------------------

def test_mmlu_five_shot_prompt_is_the_original_format():
    prompts = load_mmlu(MMLU)
    first = prompts[0]
    assert first.id == "high_school_mathematics/0"
    assert first.prompt == EXPECTED_MATH_0
    assert first.answer == "C"
    assert first.kind == "multiple-choice"


def test_mmlu_ids_answers_and_order():
    prompts = load_mmlu(MMLU)
    assert [p.id for p in prompts] == [
        "high_school_mathematics/0", "high_school_mathematics/1", "high_school_mathematics/2",
        "high_school_mathematics/3", "world_religions/0", "world_religions/1",
        "world_religions/2"]
    assert [p.answer for p in prompts] == ["C", "B", "C", "B", "C", "A", "B"]
    assert {p.kind for p in prompts} == {"multiple-choice"}
    assert all(p.prompt.endswith("\nAnswer:") for p in prompts)
    # The CSV is read as text: "0.25" and the non-ASCII "√2" survive as written, and the
    # integers sharing column B with 0.25 stay "12", where evaluate.py's pd.read_csv would
    # infer a float column and print "B. 12.0".
    assert "\nB. 0.25\nC. √2\nD. 9/3\nAnswer:" in prompts[2].prompt
    assert "\nA. 8\nB. 12\nC. 15\nD. 20\nAnswer:" in prompts[1].prompt
    religion = prompts[4].prompt
    assert religion.startswith("The following are multiple choice questions (with answers) "
                               "about  world religions.\n\n")
    assert 'In Hinduism, what does the term "karma" refer to?\nA. A river\n' in religion
    assert religion.count("\nAnswer: ") == 5


def test_mmlu_zero_shot_subjects_and_limit():
    zero = load_mmlu(MMLU, subjects=["world_religions"], shots=0)
    assert [p.id for p in zero] == ["world_religions/0", "world_religions/1",
                                    "world_religions/2"]
    assert zero[0].prompt == (
        "The following are multiple choice questions (with answers) about  world religions.\n\n"
        "What is the main language of the Quran?\nA. Persian\nB. Aramaic\nC. Arabic\n"
        "D. Hebrew\nAnswer:")
    two_shot = load_mmlu(MMLU, subjects=["world_religions"], shots=2)
    assert two_shot[0].prompt.count("\nAnswer: ") == 2
    assert "Four Noble Truths" not in two_shot[0].prompt
    limited = load_mmlu(MMLU, max_per_subject=2)
    assert [p.id for p in limited] == ["high_school_mathematics/0", "high_school_mathematics/1",
                                       "world_religions/0", "world_religions/1"]


def test_mmlu_without_dev_folder_is_fine_for_zero_shot(tmp_path):
    shutil.copytree(MMLU / "test", tmp_path / "test")
    assert len(load_mmlu(tmp_path, shots=0)) == 7
    with pytest.raises(ConfigError, match=r"high_school_mathematics_dev\.csv: no such file"):
        load_mmlu(tmp_path)


def test_load_dataset_mmlu_spec():
    both = load_dataset(f"mmlu:{MMLU}")
    assert both == load_mmlu(MMLU)
    one = load_dataset(f"mmlu:{MMLU}:world_religions")
    assert [p.id for p in one] == ["world_religions/0", "world_religions/1", "world_religions/2"]
    listed = load_dataset(f"mmlu:{MMLU}:world_religions,high_school_mathematics",
                          shots=0, max_per_subject=1)
    assert [p.id for p in listed] == ["world_religions/0", "high_school_mathematics/0"]


def broken_copy(tmp_path: Path) -> Path:
    root = tmp_path / "mmlu"
    shutil.copytree(MMLU, root)
    return root


def test_mmlu_errors_name_the_file(tmp_path):
    root = broken_copy(tmp_path)
    dev = root / "dev" / "world_religions_dev.csv"
    test = root / "test" / "world_religions_test.csv"

    dev.unlink()
    with pytest.raises(ConfigError, match=r"world_religions_dev\.csv: no such file"):
        load_mmlu(root)

    with pytest.raises(ConfigError, match=r"test[/\\]astronomy_test\.csv: no such file"):
        load_mmlu(root, subjects=["astronomy"])

    test.write_text("Q?,a,b,c,d,E\n")
    with pytest.raises(ConfigError, match=r"world_religions_test\.csv: row 1: .*got 'E'"):
        load_mmlu(root, subjects=["world_religions"], shots=0)

    test.write_text("Q?,a,b,c,d,A\nQ2?,a,b,c,B\n")            # a field missing on row 2
    with pytest.raises(ConfigError, match=r"world_religions_test\.csv: row 2: .*missing field"):
        load_mmlu(root, subjects=["world_religions"], shots=0)

    test.write_text("Q?,a,b,c,d,A\nQ2?,a,b,c,d,e,B\n")        # one too many on line 2
    with pytest.raises(ConfigError, match=r"world_religions_test\.csv: .*line 2, saw 7"):
        load_mmlu(root, subjects=["world_religions"], shots=0)

    test.write_text("question,A,B,C\n")
    with pytest.raises(ConfigError, match=r"world_religions_test\.csv: has 4 columns, expected 6"):
        load_mmlu(root, subjects=["world_religions"], shots=0)

    test.write_text("")
    with pytest.raises(ConfigError, match=r"world_religions_test\.csv: no rows"):
        load_mmlu(root, subjects=["world_religions"], shots=0)

    with pytest.raises(ConfigError, match=r"high_school_mathematics_dev\.csv: has 5 examples"):
        load_mmlu(root, subjects=["high_school_mathematics"], shots=6)


def test_mmlu_empty_or_missing_folder(tmp_path):
    (tmp_path / "test").mkdir()
    with pytest.raises(ConfigError, match=r"test: no <subject>_test\.csv files"):
        load_mmlu(tmp_path)
    with pytest.raises(ConfigError, match=r"nowhere[/\\]test: no such folder"):
        load_mmlu(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"is a folder; for MMLU write mmlu:"):
        load_dataset(str(tmp_path))


# --- JSONL ------------------------------------------------------------------

def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n"
                            for row in rows))
    return path


def test_gsm8k_style_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
         "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\n48+24 = <<48+24=72>>72\n#### 72"},
        {"question": "A shop sells 1,200 pens a week. How many in 2 weeks?",
         "answer": "1,200 * 2 = 2,400\n####  2,400 "},
        "",
        {"id": "q7", "prompt": "What is 47 plus 38?\nAnswer:", "answer": 85},
        {"prompt": "Write a haiku."},
    ])
    prompts = load_jsonl_prompts(path)
    assert prompts[0] == Prompt(
        id="1", prompt="Natalia sold 48 clips in April and half as many in May. How many in all?",
        answer="72", kind="free")
    assert prompts[1].answer == "2,400"
    assert prompts[2] == Prompt(id="q7", prompt="What is 47 plus 38?\nAnswer:", answer="85")
    assert prompts[3] == Prompt(id="5", prompt="Write a haiku.")
    assert load_dataset(str(path)) == prompts
    assert is_correct("free", prompts[1].answer, "So they sell 2400 pens.")


def test_jsonl_errors_name_file_and_line(tmp_path):
    cases = [
        (["{not json"], r"bad\.jsonl:1: not JSON"),
        ([{"id": "a", "prompt": "x"}, {"answer": "3"}], r"bad\.jsonl:2: .*\"prompt\""),
        ([[1, 2]], r"bad\.jsonl:1: each line must be a JSON object"),
        ([{"prompt": "x", "answer": [1]}], r"bad\.jsonl:1: \"answer\" must be"),
        ([{"prompt": "x", "kind": "essay"}], r"bad\.jsonl:1: \"kind\" must be one of"),
        ([{"prompt": "x", "kind": "multiple-choice", "answer": "E"}], r"bad\.jsonl:1: .*got 'E'"),
        ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], r"bad\.jsonl:2: duplicate id"),
        (["", "  "], r"bad\.jsonl: no prompts"),
    ]
    for rows, message in cases:
        path = write_jsonl(tmp_path / "bad.jsonl", rows)
        with pytest.raises(ConfigError, match=message):
            load_jsonl_prompts(path)


def test_shipped_default_prompts_and_unknown_names(tmp_path):
    prompts = load_dataset("default")
    assert len(prompts) >= 10
    assert prompts[0].id == "1" and prompts[0].prompt.startswith("A baker makes 24 muffins")
    assert all(p.kind == "free" for p in prompts)
    with pytest.raises(ConfigError, match=r"prompt 'no-such-set' not found"):
        load_dataset("no-such-set")
    with pytest.raises(ConfigError, match=r"missing\.jsonl: no such file"):
        load_dataset(str(tmp_path / "missing.jsonl"))


# --- scoring ----------------------------------------------------------------

@pytest.mark.parametrize("text, letter", [
    (" B", "B"), ("B", "B"), (" (C)", "C"), ("(C", "C"), ("D.", "D"), (" A\n\nThe next", "A"),
    ("\n  C because", "C"), (" Because", None), (" b", None), ("", None), (" E", None),
    (" The answer is B", None), ("AB", None),
])
def test_extract_choice(text, letter):
    assert extract_choice(text) == letter


@pytest.mark.parametrize("text, number", [
    (" 47 plus 38 is 85.\n", "85"),
    (" First, 6 times 7 is 42. Then 42 minus 5 is 37. The answer is 37.\n", "37"),
    (" First, 6 times 7 is 42. Then 42 minus 5 is", "5"),        # cut off: the last number
    (" 47 plus 38 is 85.\nQuestion: What is 9 plus 1?", "85"),   # ran on into a new example
    (" I do not know.", None),
    ("", None),
    ("She has 1,234 stamps.", "1234"),
    ("It costs $1,234.50 now", "1234.5"),
    ("The total is 5.0", "5"),
    ("He owes -12 dollars.", "-12"),
    ("x = -3.50", "-3.5"),
    ("pages 10-12", "12"),
    ("Then -0 remain", "0"),
    ("step 1: 3 + 4 = 7\n#### 7", "7"),
    ("18 eggs, 3 eaten\n####  1,000\nand then 99", "1000"),
    ("she is sure ####", None),
    ("3,4,5", "5"),
])
def test_extract_final_number(text, number):
    assert extract_final_number(text) == number


def test_is_correct():
    assert is_correct("multiple-choice", "B", " B")
    assert is_correct("multiple-choice", "C", " (C) because")
    assert not is_correct("multiple-choice", "B", " Because")
    assert not is_correct("multiple-choice", "A", " D.")
    assert is_correct("free", "85", " 47 plus 38 is 85.\n")
    assert not is_correct("free", "85", " 47 plus 38 is 8")        # truncated mid-number
    assert not is_correct("free", "85", " 47 plus 38 is")          # truncated: 38 is not it
    assert not is_correct("free", "85", " no idea")
    assert is_correct("free", "1,234", "that is 1234")
    assert is_correct("free", "5", "about 5.00")
    assert is_correct("free", "-7", "#### -7")
    assert not is_correct("free", "7", "#### -7")
    assert is_correct("free", "Paris", "  Paris\n")
    assert not is_correct("free", "Paris", "Paris, France")
    with pytest.raises(ValueError, match="unknown prompt kind"):
        is_correct("essay", "x", "x")


def test_accuracy():
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy(iter([False])) == 0.0
    assert accuracy(x == "B" for x in "BBA") == pytest.approx(2 / 3)
    assert math.isnan(accuracy([]))
