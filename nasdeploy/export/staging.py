"""The one staging helper of every export folder: build it under a temporary name, publish it by a rename.

A failure anywhere (bad input, exporter error, failed parity) leaves neither the folder nor its temporary
sibling; an existing folder is replaced only once the new one is complete (overwrite), and only when it is
one nasdeploy made (its .nasdeploy mark names the same kind): a folder of other content is never touched,
whatever overwrite says. The staging folder carries the mark from the start, so the staging leftovers of a
killed export are recognised and cleared by the next export to the same place.
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
from nasdeploy.utils.ownership import FolderKind, check_folder, mark_folder, remove_stale_staging

STAGING_TAG, TRASH_TAG = "partial", "old"


def check_out_dir(out_dir: Path, overwrite: bool, kind: FolderKind = "export", option: str = "--out") -> None:
    """ConfigError unless `out_dir` is absent, or (with `overwrite`) empty or a folder of `kind` nasdeploy made."""
    check_folder(out_dir, kind, option)  # a file, a folder of other content or of another kind: refused
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"output directory already exists: {out_dir} (use overwrite / --overwrite to replace it)")


def _temporary_sibling(out_dir: Path, tag: str, kind: FolderKind) -> Path:
    """A new marked folder `.<name>.<tag>-XXXXXXXX` beside out_dir (mkdtemp: never an existing entry or a link)."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{tag}-", dir=out_dir.parent))
    except (FileExistsError, NotADirectoryError):
        raise
    except OSError as exc:  # name the folder asked for, not the staging sibling
        raise type(exc)(exc.errno, f"cannot create the output folder: {(exc.strerror or str(exc)).lower()}", str(out_dir)) from None
    mark_folder(folder, kind)
    return folder


def _publish(staging: Path, out_dir: Path, kind: FolderKind) -> None:
    """Move the finished staging folder onto out_dir (an old one is moved aside first, then deleted)."""
    set_default_permissions(staging)  # mkdtemp made it 0700; scripts keep their executable bit
    if out_dir.exists() or out_dir.is_symlink():
        check_folder(out_dir, kind)  # again: what is there now may not be what was there when the export began
        trash = _temporary_sibling(out_dir, TRASH_TAG, kind)
        os.replace(out_dir, trash / "old")
        os.replace(staging, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


def remove_leftovers(out_dir: Path, kind: FolderKind) -> list[Path]:
    """The staging and trash folders a killed export to `out_dir` left beside it (marked `kind` or empty)."""
    return [path for tag in (STAGING_TAG, TRASH_TAG)
            for path in remove_stale_staging(out_dir.parent, out_dir.name, kind, tag)]


@contextlib.contextmanager
def staged_folder(out_dir: str | os.PathLike[str], kind: FolderKind, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a new folder beside `out_dir` holding only its mark of `kind`; on success it becomes `out_dir`, on failure it
    goes. Staging leftovers of a killed export to `out_dir` are cleared first."""
    final = Path(out_dir)
    check_out_dir(final, overwrite, kind)
    remove_leftovers(final, kind)
    staging = _temporary_sibling(final, STAGING_TAG, kind)
    try:
        yield staging
        _publish(staging, final, kind)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
