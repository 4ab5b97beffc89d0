"""The darts_rnn language model through the generic `nasdeploy export` / `nasdeploy profile`: ONNX export with
onnxruntime parity over a sequence with the hidden state carried, typed parity failures, cost per token."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch

from nasdeploy.cli.main import main
from nasdeploy.errors import ExportError
from nasdeploy.export.darts_rnn import check_darts_rnn_parity, export_darts_rnn_onnx, export_darts_rnn_target
from nasdeploy.export.parity import NonFiniteOutputError, ToleranceError
from nasdeploy.genotypes import genotype_to_dict, get_genotype
from nasdeploy.nets.darts_rnn import NET_NAME, build_darts_rnn_network, load_darts_rnn_network
from nasdeploy.profile.darts_rnn import profile_darts_rnn
from nasdeploy.utils.ort import ort_session

from helpers import run_cli as run

SEQ_LEN, NTOKENS, NHID = 4, 40, 8


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A train-format checkpoint exported by `nasdeploy export CHECKPOINT` (dynamic batch, parity at batch 2 and 4)."""
    root = tmp_path_factory.mktemp("darts_rnn_export")
    torch.manual_seed(0)
    model = build_darts_rnn_network("DARTS_V2_RNN", NTOKENS, emsize=NHID, nhid=NHID)
    save_meta = {"genotype": genotype_to_dict(get_genotype("DARTS_V2_RNN")), "net": NET_NAME,
                 "net_kwargs": model.default_cfg.to_dict(), "epoch": 1}
    from nasdeploy.utils.checkpoint import save_checkpoint

    save_checkpoint(root / "best.pt", model.state_dict(), kind="train", meta=save_meta)
    try:
        main(["export", str(root / "best.pt"), "--seq-len", str(SEQ_LEN), "--batch-size", "2", "--dynamic-batch",
              "--out", str(root / "export")])
    except SystemExit as exc:  # click's standalone exit
        assert exc.code in (0, None)
    return root


def test_export_folder_reports_and_graph_interface(exported):
    out = exported / "export"
    assert sorted(p.name for p in out.iterdir()) == [".nasdeploy", "export.json", "model.onnx", "parity_onnx.json"]
    parity = json.loads((out / "parity_onnx.json").read_text())
    assert parity["passed"] and parity["rtol"] == 1e-3 and parity["atol"] == 1e-5 and parity["model_path"] == "model.onnx"
    assert sorted({tuple(c["input_shape"]) for c in parity["cases"]}) == [(SEQ_LEN, 2), (SEQ_LEN, 4)]
    errors = {o["name"]: o["max_abs_err"] for o in parity["outputs"]}
    assert errors["log_probs"] < 1e-4 and errors["hidden_out"] < 1e-5
    report = json.loads((out / "export.json").read_text())
    assert report["source"]["checkpoint"].endswith("best.pt") and report["weights"] == "trained"
    assert report["onnx"]["input_shape"] == [SEQ_LEN, "batch"] and report["parity"]["onnx"]["passed"]
    session = ort_session(out / "model.onnx")
    assert [i.name for i in session.get_inputs()] == ["tokens", "hidden"]
    assert [o.name for o in session.get_outputs()] == ["log_probs", "hidden_out"]
    assert session.get_inputs()[0].shape[0] == SEQ_LEN  # fixed sequence length, dynamic batch


def test_onnx_windows_chained_match_one_long_pytorch_sequence(exported):
    model = load_darts_rnn_network(exported / "best.pt")
    session = ort_session(exported / "export" / "model.onnx")
    tokens = torch.randint(0, NTOKENS, (3 * SEQ_LEN, 3))
    ref_lp, ref_h = model(tokens, model.init_hidden(3))
    hidden = np.zeros((1, 3, NHID), dtype=np.float32)
    outs = []
    for w in range(3):  # the state goes from one ONNX call to the next, as a streaming caller would do
        lp, hidden = session.run(None, {"tokens": tokens[w * SEQ_LEN:(w + 1) * SEQ_LEN].numpy(), "hidden": hidden})
        outs.append(lp)
    np.testing.assert_allclose(np.concatenate(outs), ref_lp.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hidden, ref_h.detach().numpy(), rtol=1e-4, atol=1e-6)


def test_parity_check_fails_loudly_and_typed_on_a_different_model(exported):
    other = load_darts_rnn_network(exported / "best.pt")
    with torch.no_grad():
        other.rnns[0]._Ws[3].mul_(1.5)
    with pytest.raises(ToleranceError, match="log_probs: max abs .* hidden_out: max abs") as info:
        check_darts_rnn_parity(other, exported / "export" / "model.onnx", seq_len=SEQ_LEN, batch_sizes=[2], windows=2)
    assert isinstance(info.value, ExportError) and (info.value.rtol, info.value.atol) == (1e-3, 1e-5)
    bad = [o for o in info.value.outputs if not o.ok]
    assert [o.name for o in info.value.outputs] == ["log_probs", "hidden_out"]
    assert bad and all(o.max_abs_err > 1e-5 for o in bad)


def test_profile_counts_and_times_torch_and_onnx(exported):
    model = load_darts_rnn_network(exported / "best.pt")
    prof = profile_darts_rnn(model, seq_len=SEQ_LEN, batch_size=2, warmup=1, runs=3,
                             onnx_path=exported / "export" / "model.onnx")
    assert prof.params == sum(p.numel() for p in model.parameters())
    assert prof.macs_per_token == prof.macs_per_token_analytic == (2 * NHID) * 2 * NHID + 8 * NHID * 2 * NHID + NHID * NTOKENS
    assert prof.torch_ms_per_token > 0 and prof.onnx_ms_per_token is not None and prof.onnx_ms_per_token > 0
    assert "MACs per token" in prof.to_markdown()


def test_profile_command_takes_the_checkpoint_and_its_onnx_model(exported, tmp_path, capsys):
    code, out, err = run(["profile", str(exported / "best.pt"), "--seq-len", str(SEQ_LEN), "--batch", "2",
                           "--warmup", "0", "--runs", "2", "--onnx", str(exported / "export" / "model.onnx"),
                           "--json", str(tmp_path / "p.json")], capsys)
    assert code == 0, err
    (target,) = json.loads((tmp_path / "p.json").read_text())["targets"]
    model = load_darts_rnn_network(exported / "best.pt")
    assert target["params"] == sum(p.numel() for p in model.parameters()) and target["onnx_window"]["runs"] == 2
    assert "onnxruntime latency per token" in out


def test_parity_report_uses_the_shared_cases_and_criterion(exported):
    model = load_darts_rnn_network(exported / "best.pt")
    report = check_darts_rnn_parity(model, exported / "export" / "model.onnx", seq_len=SEQ_LEN, batch_sizes=[1, 3],
                                    windows=2)
    assert report.ok and [c.input_shape for c in report.report.cases][::2] == [(SEQ_LEN, 1)] * 2 + [(SEQ_LEN, 3)] * 2
    assert len(report.report.cases) == 2 * 2 * 2  # batch sizes x windows x outputs
    d = report.to_dict()
    assert d["criterion"].startswith("|runtime - torch| <= atol + rtol") and d["ok"] is True
    worst = max(c.max_abs_err for c in report.report.cases if c.output == "log_probs")
    assert report.outputs[0].name == "log_probs" and report.outputs[0].max_abs_err == worst


def test_parity_fails_on_non_finite_onnx_output(exported, monkeypatch):
    """A NaN from onnxruntime is a NonFiniteOutputError with NaN errors, not a silently small max()."""
    import nasdeploy.export.darts_rnn as darts_rnn

    real = darts_rnn.ort_session

    class NaNSession:
        def __init__(self, *a, **k):
            self.inner = real(*a, **k)

        def get_providers(self):
            return self.inner.get_providers()

        def run(self, names, feed):
            lp, h = self.inner.run(names, feed)
            lp[0, 0, 0] = np.nan
            return [lp, h]

    monkeypatch.setattr(darts_rnn, "ort_session", NaNSession)
    model = load_darts_rnn_network(exported / "best.pt")
    path = exported / "export" / "model.onnx"
    report = check_darts_rnn_parity(model, path, seq_len=SEQ_LEN, batch_sizes=[2], windows=2, raise_on_fail=False)
    by_name = {o.name: o for o in report.outputs}
    assert not report.ok and not by_name["log_probs"].ok and np.isnan(by_name["log_probs"].max_abs_err)
    assert by_name["hidden_out"].ok
    with pytest.raises(NonFiniteOutputError, match="log_probs: max abs nan"):
        check_darts_rnn_parity(model, path, seq_len=SEQ_LEN, batch_sizes=[2], windows=2)


def test_export_api_result_and_static_batch_profile(tmp_path):
    torch.manual_seed(1)
    model = build_darts_rnn_network("DARTS_V2_RNN", NTOKENS, emsize=NHID, nhid=NHID)
    result = export_darts_rnn_onnx(model, tmp_path / "s.onnx", seq_len=SEQ_LEN, batch_size=1, windows=2)
    assert result.parity is not None and result.parity.ok and result.parity.batch_sizes == [1]
    assert result.file_bytes == (tmp_path / "s.onnx").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.onnx"]  # no temp files left
    d = json.loads(json.dumps(result.to_dict()))
    assert d["parity"]["outputs"][1]["name"] == "hidden_out" and len(d["parity"]["cases"]) == 4
    prof = profile_darts_rnn(model, seq_len=SEQ_LEN, batch_size=1, warmup=0, runs=2, onnx_path=tmp_path / "s.onnx")
    assert prof.onnx_window["runs"] == 2 and prof.onnx_window["p99_ms"] >= prof.onnx_window["median_ms"] > 0
    assert prof.torch_window["p90_ms"] >= prof.torch_window["median_ms"] and prof.torch_step["runs"] == 2
    assert "p99" in prof.to_markdown() and json.dumps(prof.to_dict())
    from nasdeploy.errors import ConfigError

    with pytest.raises(ConfigError, match="fixed batch of 1"):
        profile_darts_rnn(model, seq_len=SEQ_LEN, batch_size=2, warmup=0, runs=1, onnx_path=tmp_path / "s.onnx")
    with pytest.raises(ConfigError, match="sequence length 4"):
        profile_darts_rnn(model, seq_len=SEQ_LEN + 1, batch_size=1, warmup=0, runs=1, onnx_path=tmp_path / "s.onnx")


@pytest.mark.parametrize("argv, message", [
    (["export", "DARTS_V1_RNN", "--checkpoint", "{root}/best.pt", "--out", "{tmp}/o"],
     "was trained for DARTS_V2_RNN, which differs from the target 'DARTS_V1_RNN'"),
    (["export", "{root}/best.pt", "--format", "executorch", "--out", "{tmp}/o"], "exports to ONNX only"),
    (["export", "{root}/best.pt", "--channels", "16", "--out", "{tmp}/o"], "has channels=8, but channels=16"),
    (["export", "{root}/best.pt", "--net", "cifar", "--out", "{tmp}/o"], "wrong genotype kind"),
    (["profile", "{root}/best.pt", "DARTS_V2"], "cannot share one profile table"),
    (["profile", "{root}/best.pt", "--latency", "ort-cpu"], "--latency do not apply"),
])
def test_bad_input_for_a_language_model_is_one_line(exported, tmp_path, capsys, argv, message):
    code, _, err = run([a.format(root=exported, tmp=tmp_path) for a in argv], capsys)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_the_adapters_of_every_space_take_the_same_arguments():
    from nasdeploy.spaces.table import SPACES

    for part in ("export_target", "profile_targets"):
        signatures = {name: [(p.name, p.annotation) for p in inspect.signature(space.load(part)).parameters.values()]
                      for name, space in SPACES.items()}
        assert len({tuple(s) for s in signatures.values()}) == 1, (part, signatures)
    assert export_darts_rnn_target is SPACES["darts_rnn"].load("export_target")
