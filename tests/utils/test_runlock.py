"""run_directory_lock: a second process gets one line naming the first's PID; the lock dies with its holder."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nasdeploy.errors import ConfigError
from nasdeploy.utils.runlock import run_directory_lock

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

ROOT = Path(__file__).resolve().parents[2]

HOLD = """
import sys, time
from nasdeploy.utils.runlock import run_directory_lock
with run_directory_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""

TRY = """
import sys
from nasdeploy.errors import ConfigError
from nasdeploy.utils.runlock import run_directory_lock
try:
    with run_directory_lock(sys.argv[1]):
        print("got it")
except ConfigError as exc:
    print(f"refused: {exc}")
"""


def _start(code: str, run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(run_dir), *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _try(run_dir: Path) -> str:
    proc = _start(TRY, run_dir)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out.strip()


@pytest.mark.parametrize("how", ["exit", "kill -9"])
def test_second_process_is_refused_until_the_first_is_gone(tmp_path, how):
    run_dir = tmp_path / "run"
    holder = _start(HOLD, run_dir, "--marker-arg")
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = _try(run_dir)
        assert "\n" not in line
        assert line.startswith(f"refused: run directory {run_dir} is in use by process {holder.pid} (")
        assert "--marker-arg" in line and line.endswith("; wait for it or use another --out")
    finally:
        holder.send_signal(signal.SIGTERM if how == "exit" else signal.SIGKILL)
        holder.wait(timeout=30)
    assert _try(run_dir) == "got it"
    assert (run_dir / ".lock").read_text() == ""  # a lock file left behind names no one


def test_same_process_twice_and_disabled(tmp_path):
    with run_directory_lock(tmp_path) as lock:
        assert lock == tmp_path / ".lock"
        with pytest.raises(ConfigError, match=r"is in use by process \d+"):
            with run_directory_lock(tmp_path):
                pass
        with run_directory_lock(tmp_path, enabled=False) as none:  # other torchrun ranks
            assert none is None
    with run_directory_lock(tmp_path):  # released on exit of the block
        pass


def test_released_when_the_block_raises(tmp_path):
    with pytest.raises(RuntimeError):
        with run_directory_lock(tmp_path):
            raise RuntimeError("crash in the run")
    with run_directory_lock(tmp_path):
        pass


def test_a_second_search_into_the_same_directory_is_refused_while_the_first_runs(tmp_path):
    """Two `nasdeploy search` processes into one --out: the second gets one line naming the first's PID."""
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nasdeploy", "search", "--config", str(CONFIGS / "darts_cnn_demo_search.yaml"), "--out", str(out),
           "--no-progress", "search.epochs=2"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / ".lock").is_file() or not (out / ".lock").read_text().strip():
            assert time.time() < deadline and first.poll() is None, "the first search did not start"
            time.sleep(0.2)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and f"in use by process {first.pid}" in second.stderr
        assert second.stderr.count("\n") == 1
    finally:
        first.kill()
        first.wait()


def test_a_refused_run_leaves_no_directory(tmp_path):
    from nasdeploy.errors import ConfigError
    from nasdeploy.config.darts_cnn import DartsCnnSearchConfig
    from nasdeploy.utils.yamlconfig import load_config
    from nasdeploy.search.darts_cnn_loop import run_search

    config = load_config(DartsCnnSearchConfig, CONFIGS / "darts_cnn_demo_search.yaml", ["search.batch_size=100000"])
    with pytest.raises(ConfigError, match="fewer than one batch"):
        run_search(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
