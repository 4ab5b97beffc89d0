"""CIFAR batch files are read by a restricted unpickler: real batches load, code-running pickles are refused."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest

from nasdeploy.data.cifar import read_cifar
from nasdeploy.errors import DataError

FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class _Py2StylePickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes (BINSTRING), as the published CIFAR batches were written."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _batch(seed: int, n: int = 4) -> tuple[dict, np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    entry = {b"batch_label": b"training batch 1 of 5", b"labels": labels, b"data": data,
             b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)]}
    return entry, data, labels


def _dump(obj: object, style: str) -> bytes:
    if style == "py2-numpy1":  # the published files: Python 2 str opcodes and NumPy 1's numpy.core path
        import io
        buf = io.BytesIO()
        _Py2StylePickler(buf, protocol=2).dump(obj)
        return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    if style == "py3-proto2-numpy1":  # Python 3 at protocol 2 (bytes via _codecs.encode), NumPy 1 path
        return pickle.dumps(obj, protocol=2).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    if style == "py3-proto2-numpy2":
        return pickle.dumps(obj, protocol=2)
    return pickle.dumps(obj, protocol=int(style[-1]))  # proto4: numpy._core._reconstruct; proto5: _frombuffer


def _write_cifar10(root, style: str):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    expected_x, expected_y = [], []
    for k, fname in enumerate(FILES):
        entry, data, labels = _batch(k)
        raw = _dump(entry, style)
        assert {"py2-numpy1": b"cnumpy.core.multiarray\n_reconstruct\n", "py3-proto2-numpy1": b"cnumpy.core.multiarray\n",
                "py3-proto2-numpy2": b"cnumpy._core.multiarray\n", "proto4": b"numpy._core.multiarray",
                "proto5": b"_frombuffer"}[style] in raw
        assert (b"U\x04data" in raw) == (style == "py2-numpy1")  # Python 2 str opcode for the key
        (folder / fname).write_bytes(raw)
        if fname != "test_batch":
            expected_x.append(data)
            expected_y += labels
    names = [f"class{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(_dump({b"label_names": names, b"num_cases_per_batch": 4}, style))
    return folder, np.concatenate(expected_x), np.array(expected_y)


@pytest.mark.parametrize("style", ["py2-numpy1", "py3-proto2-numpy1", "py3-proto2-numpy2", "proto4", "proto5"])
def test_genuine_cifar_batches_still_load(tmp_path, style):
    _, data, labels = _write_cifar10(tmp_path, style)
    x, y, classes = read_cifar("cifar10", tmp_path, "train")
    np.testing.assert_array_equal(x, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(y, labels)
    assert classes == tuple(f"class{i}" for i in range(10))


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_batch_that_runs_a_shell_command_is_refused_and_nothing_runs(tmp_path, protocol):
    folder, _, _ = _write_cifar10(tmp_path, "proto4")
    marker = tmp_path / "PWNED"
    entry, _, _ = _batch(0)
    entry[b"labels"] = _RunsShell(marker)
    (folder / "data_batch_1").write_bytes(pickle.dumps(entry, protocol=protocol))
    with pytest.raises(DataError) as err:
        read_cifar("cifar10", tmp_path, "train")
    msg = str(err.value)
    assert "\n" not in msg
    assert str(folder / "data_batch_1") in msg
    assert f"{os.system.__module__}.system" in msg  # the refused global, e.g. 'posix.system'
    assert not marker.exists()


def test_builtins_outside_the_data_types_are_refused(tmp_path):
    folder, _, _ = _write_cifar10(tmp_path, "proto4")
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": _CallsEval()}, protocol=2))
    with pytest.raises(DataError, match=r"batches\.meta: it references '(__builtin__|builtins)\.eval'"):
        read_cifar("cifar10", tmp_path, "test")


def test_codecs_global_runs_only_latin1(tmp_path):
    folder, _, _ = _write_cifar10(tmp_path, "proto4")
    # _codecs.encode('...', 'zlib_codec') would run another codec: a hand-written protocol-2 pickle.
    raw = b"\x80\x02}q\x00(X\x04\x00\x00\x00dataq\x01c_codecs\nencode\nX\x01\x00\x00\x00aX\x0a\x00\x00\x00zlib_codec\x86Rq\x02u."
    (folder / "test_batch").write_bytes(raw)
    with pytest.raises(DataError, match=r"cannot read CIFAR file .*test_batch: UnpicklingError: _codecs\.encode with codec 'zlib_codec'"):
        read_cifar("cifar10", tmp_path, "test")
