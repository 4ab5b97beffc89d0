"""ONNX export of the recurrent LM: onnxruntime parity over a sequence with the hidden state carried."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nasdeploy.cli.main import main
from nasdeploy.errors import ExportError
from nasdeploy.genotypes import genotype_to_dict, get_genotype
from nasdeploy.nets.rnn import NET_NAME, build_rnn_lm, load_rnn_lm
from nasdeploy.export.language_model import check_rnn_onnx_parity, export_rnn_lm_onnx, ort_session
from nasdeploy.profile.language_model import profile_rnn_lm
from nasdeploy.utils.checkpoint import save_checkpoint

SEQ_LEN, NTOKENS, NHID = 4, 40, 8


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A train-format checkpoint exported through the CLI (dynamic batch, parity checked at batch 2 and 4)."""
    root = tmp_path_factory.mktemp("rnn_export")
    torch.manual_seed(0)
    model = build_rnn_lm("DARTS_V2_RNN", NTOKENS, emsize=NHID, nhid=NHID)
    save_checkpoint(root / "best.pt", model.state_dict(), kind="train",
                    meta={"genotype": genotype_to_dict(get_genotype("DARTS_V2_RNN")), "net": NET_NAME,
                          "net_kwargs": model.default_cfg.to_dict(), "epoch": 1})
    try:
        main(["rnn", "export", "--checkpoint", str(root / "best.pt"), "-o", str(root / "lm.onnx"),
              "--seq-len", str(SEQ_LEN), "--batch-size", "2", "--dynamic-batch", "--report", str(root / "report.json")])
    except SystemExit as exc:  # click's standalone exit
        assert exc.code in (0, None)
    return root


def test_export_report_and_graph_interface(exported):
    report = json.loads((exported / "report.json").read_text())
    assert report["parity"]["ok"] and report["parity"]["batch_sizes"] == [2, 4]
    errors = {o["name"]: o["max_abs_err"] for o in report["parity"]["outputs"]}
    assert errors["log_probs"] < 1e-4 and errors["hidden_out"] < 1e-5
    session = ort_session(exported / "lm.onnx")
    assert [i.name for i in session.get_inputs()] == ["tokens", "hidden"]
    assert [o.name for o in session.get_outputs()] == ["log_probs", "hidden_out"]
    assert session.get_inputs()[0].shape[0] == SEQ_LEN  # fixed sequence length, dynamic batch


def test_onnx_windows_chained_match_one_long_pytorch_sequence(exported):
    model = load_rnn_lm(exported / "best.pt")
    session = ort_session(exported / "lm.onnx")
    tokens = torch.randint(0, NTOKENS, (3 * SEQ_LEN, 3))
    ref_lp, ref_h = model(tokens, model.init_hidden(3))
    hidden = np.zeros((1, 3, NHID), dtype=np.float32)
    outs = []
    for w in range(3):  # the state goes from one ONNX call to the next, as a streaming caller would do
        lp, hidden = session.run(None, {"tokens": tokens[w * SEQ_LEN:(w + 1) * SEQ_LEN].numpy(), "hidden": hidden})
        outs.append(lp)
    np.testing.assert_allclose(np.concatenate(outs), ref_lp.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hidden, ref_h.detach().numpy(), rtol=1e-4, atol=1e-6)


def test_parity_check_fails_loudly_on_a_different_model(exported):
    other = load_rnn_lm(exported / "best.pt")
    with torch.no_grad():
        other.rnns[0]._Ws[3].mul_(1.5)
    with pytest.raises(ExportError, match="log_probs: max abs .* hidden_out: max abs"):
        check_rnn_onnx_parity(other, exported / "lm.onnx", seq_len=SEQ_LEN, batch_sizes=[2], windows=2)


def test_profile_counts_and_times_torch_and_onnx(exported):
    model = load_rnn_lm(exported / "best.pt")
    prof = profile_rnn_lm(model, seq_len=SEQ_LEN, batch_size=2, warmup=1, runs=3, onnx_path=exported / "lm.onnx")
    assert prof.params == sum(p.numel() for p in model.parameters())
    assert prof.macs_per_token == prof.macs_per_token_analytic == (2 * NHID) * 2 * NHID + 8 * NHID * 2 * NHID + NHID * NTOKENS
    assert prof.torch_ms_per_token > 0 and prof.onnx_ms_per_token is not None and prof.onnx_ms_per_token > 0
    assert "MACs per token" in prof.to_markdown()


def test_parity_report_uses_the_shared_cases_and_criterion(exported):
    model = load_rnn_lm(exported / "best.pt")
    report = check_rnn_onnx_parity(model, exported / "lm.onnx", seq_len=SEQ_LEN, batch_sizes=[1, 3], windows=2)
    assert report.ok and [c.input_shape for c in report.report.cases][::2] == [(SEQ_LEN, 1)] * 2 + [(SEQ_LEN, 3)] * 2
    assert len(report.report.cases) == 2 * 2 * 2  # batch sizes x windows x outputs
    d = report.to_dict()
    assert d["criterion"].startswith("|runtime - torch| <= atol + rtol") and d["ok"] is True
    worst = max(c.max_abs_err for c in report.report.cases if c.output == "log_probs")
    assert report.outputs[0].name == "log_probs" and report.outputs[0].max_abs_err == worst


def test_parity_fails_on_non_finite_onnx_output(exported, monkeypatch):
    """A NaN from onnxruntime is a failure with NaN errors, not a silently small max()."""
    import nasdeploy.export.language_model as lm

    real = lm.ort_session

    class NaNSession:
        def __init__(self, *a, **k):
            self.inner = real(*a, **k)

        def get_providers(self):
            return self.inner.get_providers()

        def run(self, names, feed):
            lp, h = self.inner.run(names, feed)
            lp[0, 0, 0] = np.nan
            return [lp, h]

    monkeypatch.setattr(lm, "ort_session", NaNSession)
    model = load_rnn_lm(exported / "best.pt")
    report = lm.check_rnn_onnx_parity(model, exported / "lm.onnx", seq_len=SEQ_LEN, batch_sizes=[2], windows=2,
                                      raise_on_fail=False)
    by_name = {o.name: o for o in report.outputs}
    assert not report.ok and not by_name["log_probs"].ok and np.isnan(by_name["log_probs"].max_abs_err)
    assert by_name["hidden_out"].ok


def test_export_api_result_and_static_batch_profile(tmp_path):
    torch.manual_seed(1)
    model = build_rnn_lm("DARTS_V2_RNN", NTOKENS, emsize=NHID, nhid=NHID)
    result = export_rnn_lm_onnx(model, tmp_path / "s.onnx", seq_len=SEQ_LEN, batch_size=1, windows=2)
    assert result.parity is not None and result.parity.ok and result.parity.batch_sizes == [1]
    assert result.file_bytes == (tmp_path / "s.onnx").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.onnx"]  # no temp files left
    d = json.loads(json.dumps(result.to_dict()))
    assert d["parity"]["outputs"][1]["name"] == "hidden_out" and len(d["parity"]["cases"]) == 4
    prof = profile_rnn_lm(model, seq_len=SEQ_LEN, batch_size=1, warmup=0, runs=2, onnx_path=tmp_path / "s.onnx")
    assert prof.onnx_window["runs"] == 2 and prof.onnx_window["p99_ms"] >= prof.onnx_window["median_ms"] > 0
    assert prof.torch_window["p90_ms"] >= prof.torch_window["median_ms"] and prof.torch_step["runs"] == 2
    assert "p99" in prof.to_markdown() and json.dumps(prof.to_dict())
    from nasdeploy.errors import ConfigError

    with pytest.raises(ConfigError, match="fixed batch of 1"):
        profile_rnn_lm(model, seq_len=SEQ_LEN, batch_size=2, warmup=0, runs=1, onnx_path=tmp_path / "s.onnx")
    with pytest.raises(ConfigError, match="sequence length 4"):
        profile_rnn_lm(model, seq_len=SEQ_LEN + 1, batch_size=1, warmup=0, runs=1, onnx_path=tmp_path / "s.onnx")


@pytest.mark.parametrize("old,new,names", [
    ("nasdeploy.nets.rnn_export", "nasdeploy.export.language_model",
     ("export_rnn_lm_onnx", "check_rnn_onnx_parity", "ort_session", "RNNExportReport", "RNNParityReport")),
    ("nasdeploy.nets.rnn_profile", "nasdeploy.profile.language_model",
     ("profile_rnn_lm", "count_macs_per_token", "analytic_macs_per_token", "RNNProfile")),
])
def test_old_rnn_deploy_paths_warn_and_reexport(old, new, names):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")) as record:
        module = importlib.import_module(old)
    assert len([w for w in record if issubclass(w.category, DeprecationWarning)]) == 1
    assert "\n" not in str(record[0].message)
    moved = importlib.import_module(new)
    for name in names:
        assert getattr(module, name) is getattr(moved, name)


def test_rnn_deployment_code_loads_no_search_code():
    import subprocess
    import sys

    code = (
        "import sys, nasdeploy.export.language_model, nasdeploy.profile.language_model;"
        "from nasdeploy.nets.rnn import build_rnn_lm; build_rnn_lm('DARTS_V2_RNN', 20, emsize=4, nhid=4);"
        "bad = [m for m in sys.modules if m.startswith(('nasdeploy.search', 'nasdeploy.spaces', 'nasdeploy.kernels', 'nasdeploy.train'))];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
