"""CIFAR-10 / CIFAR-100 read from a local directory in torchvision's layout (never downloaded)."""

from __future__ import annotations

import builtins
import importlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nasdeploy.errors import DataError, LimitError
from nasdeploy.utils.limits import DATA_FILE_BYTES


@dataclass(frozen=True)
class CifarLayout:
    """Where torchvision's CIFAR pickles live and which keys they use."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    meta_file: str
    names_key: str
    num_classes: int


CIFAR_LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                           ("test_batch",), "labels", "batches.meta", "label_names", 10),
    "cifar100": CifarLayout("CIFAR-100", "cifar-100-python", ("train",), ("test",), "fine_labels", "meta",
                            "fine_label_names", 100),
}

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def find_cifar_dir(name: str, data_dir: str | os.PathLike[str] | None) -> Path:
    """The folder holding the pickles: `data_dir/<folder>` or `data_dir` itself."""
    layout = CIFAR_LAYOUTS[name]
    expected = f"{layout.folder}/{{{','.join(layout.train_files[:1] + ('...',) + layout.test_files)}}}"
    if data_dir is None:
        raise DataError(f"dataset '{name}' needs a data directory (--data-dir DIR) holding torchvision's {expected}; "
                        f"nothing is downloaded (get it from {CIFAR_URL})")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"{layout.title} data directory does not exist: {root} (expected {root / expected})")
    for candidate in (root / layout.folder, root):
        if all((candidate / f).is_file() for f in layout.train_files + layout.test_files):
            return candidate
    folder = root / layout.folder if (root / layout.folder).is_dir() else root
    missing = [f for f in layout.train_files + layout.test_files if not (folder / f).is_file()]
    raise DataError(f"{layout.title} not found under {root}: expected torchvision's {expected} "
                    f"(missing in {folder}: {', '.join(missing)}); nothing is downloaded (get it from {CIFAR_URL})")


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle names a global outside what CIFAR batch files hold."""


# Builtin types a CIFAR batch (or its meta file) is made of; Python 2 pickles name them under __builtin__.
_SAFE_BUILTINS = ("list", "dict", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float",
                  "complex", "bool")
# NumPy functions that rebuild arrays, dtypes and scalars; NumPy 1.x pickles name numpy.core, 2.x numpy._core.
_NUMPY_REBUILDERS = (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))


def _numpy_core_module(name: str) -> Any:
    """numpy._core.<name> (NumPy 2) or numpy.core.<name> (NumPy 1), without NumPy 2's deprecation warning."""
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{name}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """_codecs.encode as Python 3 pickles bytes at protocol 2 (text, 'latin1'); no other codec is run."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r}")
    return text.encode("latin1")


def _cifar_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object: every global a CIFAR pickle may name; nothing else is ever imported."""
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module, name in _NUMPY_REBUILDERS:
        obj = getattr(_numpy_core_module(module), name)
        allowed[(f"numpy.core.{module}", name)] = allowed[(f"numpy._core.{module}", name)] = obj
    for name in _SAFE_BUILTINS:
        allowed[("builtins", name)] = allowed[("__builtin__", name)] = getattr(builtins, name)
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays, dtypes, scalars and builtin containers (CIFAR batches)."""

    def __init__(self, file: Any) -> None:
        super().__init__(file, encoding="latin1")
        self._allowed = _cifar_globals()

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object for `module.name`; anything else is refused before it is imported."""
        obj = self._allowed.get((module, name))
        if obj is None:
            raise RefusedGlobalError(f"{module}.{name}")
        return obj


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            DATA_FILE_BYTES.check(f"CIFAR file {path}", os.fstat(f.fileno()).st_size)
            data = CifarUnpickler(f).load()
    except LimitError:
        raise
    except RefusedGlobalError as exc:
        raise DataError(f"refused to load CIFAR file {path}: it references '{exc}', which a CIFAR batch never "
                        f"holds (only numpy arrays, lists, dicts, strings and numbers are loaded)") from None
    except Exception as exc:
        raise DataError(f"cannot read CIFAR file {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise DataError(f"CIFAR file {path} does not hold a dict (is it a torchvision-format pickle?)")
    # Python 2 pickles read with latin1 give str keys; files re-pickled by Python 3 may hold bytes keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}


def read_cifar(name: str, data_dir: str | os.PathLike[str] | None, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images uint8 [N, 32, 32, 3], labels int64 [N] and class names of a CIFAR split ('train' | 'test')."""
    if name not in CIFAR_LAYOUTS:
        raise DataError(f"unknown CIFAR dataset '{name}'; choose one of: {', '.join(CIFAR_LAYOUTS)}")
    if split not in ("train", "test"):
        raise DataError(f"CIFAR split must be 'train' or 'test', got {split!r}")
    layout = CIFAR_LAYOUTS[name]
    folder = find_cifar_dir(name, data_dir)
    images, labels = [], []
    for fname in layout.train_files if split == "train" else layout.test_files:
        path = folder / fname
        entry = _unpickle(path)
        if "data" not in entry or layout.label_key not in entry:
            raise DataError(f"CIFAR file {path} lacks the 'data' / '{layout.label_key}' entries of {layout.title}")
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"CIFAR file {path}: data has shape {data.shape}, expected (N, 3072)")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(entry[layout.label_key], dtype=np.int64))
    x, y = np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)
    if len(x) != len(y):
        raise DataError(f"{layout.title} in {folder}: {len(x)} images but {len(y)} labels")
    if y.size and (y.min() < 0 or y.max() >= layout.num_classes):
        raise DataError(f"{layout.title} in {folder}: labels outside 0..{layout.num_classes - 1}")
    meta_path = folder / layout.meta_file
    classes = tuple(str(i) for i in range(layout.num_classes))
    if meta_path.is_file():
        names = _unpickle(meta_path).get(layout.names_key)
        if names is not None and len(names) == layout.num_classes:
            classes = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)
    return x, y, classes
