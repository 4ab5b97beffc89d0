"""The fused kernels under AddressSanitizer: the NaN / inf / odd-size kernel tests against an instrumented build.

A NaN once left a max-pool argmax code pointing outside its window and the CPU backward scattered
through it, corrupting the heap; plain tests only see that when glibc happens to notice. Here the
CPU extension (its CUDA emulation TU included) is built with -fsanitize=address under its own name
(nasdeploy_mixed_node_cpu_asan, never the normal cache entry) and the tests run in a subprocess with
libasan preloaded, so any out-of-bounds access in the kernels fails the run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nasdeploy.kernels import build

REPO = Path(__file__).resolve().parents[2]
KERNEL_TESTS = "tests/kernels/test_mixed_node.py"
CASES = "nonfinite or odd_shapes"  # -k: the NaN / inf cases (CPU and CUDA emulation) and the odd shapes
MIN_PASSED = 50  # the cases selected above, so a renamed test cannot turn this into an empty run
# In the child: libasan is already mapped (LD_PRELOAD), so drop it from the environment before the JIT
# build starts ninja and the compiler, then build/load the instrumented variant and run the tests.
DRIVER = """\
import os, sys
os.environ.pop("LD_PRELOAD", None)
from nasdeploy.kernels.build import load_extension
print("asan build:", load_extension().name, flush=True)
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def asan_runtime() -> Path | None:
    """libasan of the C++ compiler torch builds with (gcc's -print-file-name), or None."""
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    if cxx is None:
        return None
    done = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = Path(done.stdout.strip())
    return path if done.returncode == 0 and path.is_absolute() and path.is_file() else None


@pytest.mark.slow
def test_kernel_tests_pass_under_address_sanitizer():
    if not build.compiler_available():
        pytest.skip("no C++ compiler/ninja: the instrumented extension cannot be built")
    runtime = asan_runtime()
    if runtime is None:
        pytest.skip("libasan.so not found (`$CXX -print-file-name=libasan.so`): no AddressSanitizer runtime")
    env = dict(os.environ, LD_PRELOAD=str(runtime), ASAN_OPTIONS="detect_leaks=0",  # python itself leaks
               **{build.SANITIZE_ENV: "address"})
    env.pop("NASDEPLOY_EMULATE_CUDA", None)
    # -s: pytest must not capture fd 2, or a sanitizer report dies with the process unseen.
    cmd = [sys.executable, "-c", DRIVER, KERNEL_TESTS, "-q", "-s", "-p", "no:cacheprovider", "-k", CASES]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert "ERROR: AddressSanitizer" not in out, out[-8000:]
    assert done.returncode == 0, out[-8000:]
    assert "asan build: nasdeploy_mixed_node_cpu_asan" in out, out[-4000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= MIN_PASSED and "skipped" not in out, out[-4000:]
