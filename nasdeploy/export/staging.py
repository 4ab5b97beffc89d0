"""The one staging helper of every export folder: build it under a temporary name, publish it by a rename.

A failure anywhere (bad input, exporter error, failed parity) leaves neither the folder nor its temporary
sibling; an existing folder is replaced only once the new one is complete (overwrite).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from nasdeploy.errors import ConfigError
from nasdeploy.utils.files import set_default_permissions


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """ConfigError when `out_dir` exists and may not be replaced, or is not a folder."""
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"output directory already exists: {out_dir} (use overwrite / --overwrite to replace it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output path exists and is not a directory: {out_dir}")


def _temporary_sibling(out_dir: Path, tag: str) -> Path:
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{tag}-", dir=out_dir.parent))
    except (FileExistsError, NotADirectoryError):
        raise
    except OSError as exc:  # name the folder asked for, not the staging sibling
        raise type(exc)(exc.errno, f"cannot create the output folder: {(exc.strerror or str(exc)).lower()}", str(out_dir)) from None


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished staging folder onto out_dir (an old one is moved aside first, then deleted)."""
    set_default_permissions(staging)  # mkdtemp made it 0700; scripts keep their executable bit
    if out_dir.exists():
        trash = _temporary_sibling(out_dir, "old")
        os.replace(out_dir, trash / "old")
        os.replace(staging, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


@contextlib.contextmanager
def staged_folder(out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out_dir`; on success it becomes `out_dir`, on failure it goes."""
    final = Path(out_dir)
    check_out_dir(final, overwrite)
    staging = _temporary_sibling(final, "partial")
    try:
        yield staging
        _publish(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def relative_to_stage(path: str, stage: Path) -> str:
    """A path inside the staging folder as it will read once published (relative); other paths unchanged."""
    p = Path(path)
    return str(p.relative_to(stage)) if p.is_absolute() and p.is_relative_to(stage) else path
