"""Old import paths keep working for one release, each with a one-line DeprecationWarning naming the new path."""

from __future__ import annotations

import importlib
import sys

import pytest

MOVED = [
    ("nasdeploy.search.derive", "nasdeploy.spaces.darts_cnn_derive", "derive_genotype"),
    ("nasdeploy.search.derive_rnn", "nasdeploy.spaces.darts_rnn_derive", "derive_recurrent_genotype"),
    ("nasdeploy.search.autodeeplab_decode", "nasdeploy.spaces.autodeeplab_decode", "viterbi_path"),
    ("nasdeploy.train.lm_common", "nasdeploy.tasks.language_model", "evaluate_lm"),
    ("nasdeploy.train.seg_metrics", "nasdeploy.tasks.segmentation", "evaluate_miou"),
]


@pytest.mark.parametrize("old,new,name", MOVED)
def test_old_module_path_warns_and_reexports(old: str, new: str, name: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
