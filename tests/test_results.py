"""Results folders on disk (orchestrator/results.py): created atomically, written line by
line whole, read back past a torn last line, and disk errors as one line."""

from __future__ import annotations

import errno
import json
import logging
import subprocess
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator.config.loading import ConfigError
from orchestrator.results import ResultsFolder, read_records

RECORD = {"label": "fixed-k5", "padding": "x" * 900}     # about 1 KB a line


@contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs of our own at ``path`` (root only; skipped where mounting is not allowed),
    unmounted however the test ends."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_400_concurrent_new_paths_are_400_folders(tmp_path):
    with ThreadPoolExecutor(max_workers=16) as pool:
        paths = list(pool.map(lambda _: ResultsFolder.new_path(tmp_path, "race"), range(400)))
    assert len(set(paths)) == 400
    assert all(path.is_dir() and not any(path.iterdir()) for path in paths)


def test_a_long_label_still_makes_a_folder(tmp_path):
    path = ResultsFolder.new_path(tmp_path, "n" * 300)
    assert path.is_dir() and len(path.name) < 255


def test_a_torn_last_line_is_left_out_with_a_warning(tmp_path, caplog):
    path = tmp_path / "cycles.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n" + json.dumps({"a": 2}) + "\n" + '{"a": 3, "b')
    with caplog.at_level(logging.WARNING):
        assert read_records(path) == [{"a": 1}, {"a": 2}]
    assert "line 3 is cut short" in caplog.text
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')      # not the last line: a broken file
    with pytest.raises(ConfigError, match="cycles.jsonl:2: not a JSON record"):
        read_records(path)


def test_a_full_disk_leaves_whole_lines_and_the_run_ends_with_one_line(tmp_path, capsys):
    from orchestrator.cli import main
    with tmpfs(tmp_path / "disk", "size=64k") as disk:
        folder = ResultsFolder.create(disk, "full")
        with pytest.raises(OSError) as full:
            for _ in range(200):
                folder.append(RECORD, [RECORD, RECORD])
        folder.close()
        assert full.value.errno == errno.ENOSPC and full.value.filename.endswith(".jsonl")
        for name in (ResultsFolder.QUERIES, ResultsFolder.CYCLES):
            text = (folder.path / name).read_text()
            assert text.endswith("\n") and all(json.loads(line) == RECORD
                                               for line in text.splitlines())
        # a run whose disk is full: one line, exit code 1, nothing started
        capsys.readouterr()
        code = main(["run", "--mode", "sim", "--job", "smoke", "--results", str(disk / "runs")])
        stderr = capsys.readouterr().err
    assert code == 1 and stderr.count("\n") == 1, stderr
    assert stderr.startswith("error: ") and "No space left on device" in stderr


def test_a_read_only_results_folder_is_one_error_line_with_exit_code_2(tmp_path, capsys):
    from orchestrator.cli import main
    with tmpfs(tmp_path / "ro", "ro,size=64k") as read_only:
        capsys.readouterr()
        code = main(["run", "--mode", "sim", "--job", "smoke", "--results",
                     str(read_only / "runs")])
        stderr = capsys.readouterr().err
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"error: {read_only}/runs: cannot create a results folder there: "
                             "Read-only file system")
