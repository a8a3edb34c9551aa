"""One process per run folder: the lock refuses a live holder, names it, and takes over a dead one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import hold_lock

from cpvt.cli import main
from cpvt.train.runlock import LOCK_NAME, run_lock
from cpvt.utils.errors import RunLocked


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid  # reaped: no process has this pid now (pids are not reused this quickly)


def test_lock_is_held_for_the_body_and_released(tmp_path: Path):
    with run_lock(tmp_path / "run"):
        holder = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with run_lock(tmp_path / "run"):  # re-entrant in the same process
            pass
        assert (tmp_path / "run" / LOCK_NAME).exists()  # the inner exit does not release it
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_live_holder_is_refused_by_name(tmp_path: Path, live_pid: int):
    hold_lock(tmp_path, live_pid)
    with pytest.raises(RunLocked, match=f"in use by pid {live_pid} on {socket.gethostname()} since 2026"):
        with run_lock(tmp_path):
            pass
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == live_pid  # untouched


def test_another_hosts_lock_is_never_taken_over(tmp_path: Path):
    hold_lock(tmp_path, _dead_pid(), host="some-other-host")
    with pytest.raises(RunLocked, match="some-other-host"):
        with run_lock(tmp_path):
            pass


def test_a_dead_holder_is_taken_over_with_a_warning(tmp_path: Path):
    pid = _dead_pid()
    hold_lock(tmp_path, pid)
    with pytest.warns(UserWarning, match=f"stale lock .* pid {pid} \\(no longer running\\)"):
        with run_lock(tmp_path):
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_an_empty_lock_file_counts_as_stale(tmp_path: Path):
    (tmp_path / LOCK_NAME).write_text("")  # a holder killed between creating and writing it
    with pytest.warns(UserWarning, match="unreadable holder"):
        with run_lock(tmp_path):
            pass


def test_train_refuses_a_run_folder_in_use(tmp_path: Path, capsys, live_pid: int):
    hold_lock(tmp_path / "run", live_pid)
    code = main(["train", "--model", "deit_micro", "--data", "synthetic", "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--set", "train_limit=8", "--set", "val_limit=8"])
    assert code == 4
    assert f"in use by pid {live_pid}" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_NAME]  # nothing written
