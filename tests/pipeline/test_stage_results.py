"""Every kind of stage result round-trips through pipeline_state.json as the same typed value."""

from __future__ import annotations

import json

import pytest

from nasdeploy.errors import ConfigError
from nasdeploy.export.quantize import QuantizationResult
from nasdeploy.pipeline.results import (
    RESULT_TYPES,
    ClassifierTrainResult,
    DeriveStageResult,
    ExecuTorchStageResult,
    ExportStageResult,
    LanguageModelTrainResult,
    ParityVerdict,
    ProfileStageResult,
    QuantizeStageResult,
    ReportStageResult,
    SearchStageResult,
    SegmentationTrainResult,
    SkippedStage,
    stage_result_from_dict,
)
from nasdeploy.pipeline.state import STATE_FILE, PipelineState

VERDICT = ParityVerdict(runtime="onnxruntime 1.0 (CPU)", passed=True, max_abs_err=3.5e-6, max_rel_err=1e-3, rtol=1e-3,
                        atol=1e-5, inputs="64 validation images of demo (seed 0)", weights="trained",
                        top1_agreement=1.0)
INT8 = QuantizationResult("ort", "ok", "QDQ", runtime="onnxruntime", file="model_int8.onnx", float_file="model.onnx",
                          float_metric=0.5, int8_metric=0.375, float_size_bytes=1000, int8_size_bytes=400,
                          latency={"float ort-cpu-1t": {"median_ms": 1.5, "status": "ok"}})
EXAMPLES = [
    SkippedStage(reason="the export section lists no int8 methods"),
    SearchStageResult(epochs=3, order="first", mixed_op="fused", final={"valid_acc": 0.25, "lr": 0.01}),
    DeriveStageResult(genotype={"kind": "cnn_cell", "normal": [["skip_connect", 0]]}, text="demo_found",
                      figures={"cells": "figures/cells.svg", "path": "figures/path.png"}),
    ClassifierTrainResult(epochs=8, params=55994, checkpoint="train/checkpoint.pt", net="cifar", top1=0.552, top5=0.998,
                          num_classes=10),
    LanguageModelTrainResult(epochs=30, params=97325, checkpoint="train/best.pt", net="language_model",
                             best_valid_ppl=19.2, test_ppl=19.5, asgd_epoch=None, vocab_size=237),
    SegmentationTrainResult(epochs=12, params=187372, checkpoint="train/model.pt", net="segmentation", miou=0.56,
                            majority_miou=0.198, pixel_acc=None, filter_multiplier=4),
    ExportStageResult(files={"onnx": "export/model.onnx"}, parity={"onnx": VERDICT, "onnx_validation": VERDICT},
                      opset=20, input_shape=(3, 32, 32), skipped={"tensorrt": "no GPU"}),
    ExecuTorchStageResult(files={"executorch": "executorch/model.pte"}, parity={"executorch": VERDICT}),
    QuantizeStageResult(files={"onnx_int8": "quantize/model_int8.onnx"}, quantization={"ort": INT8},
                        skipped={"int8 executorch": "not installed"}),
    ProfileStageResult(table="mobile", found_params=5169760, found_macs=588278784.0),
    ReportStageResult(figures={"curves": "figures/curves.png"}),
]


def test_the_examples_cover_every_kind():
    assert {type(r) for r in EXAMPLES} == set(RESULT_TYPES)
    assert len({cls.kind for cls in RESULT_TYPES}) == len(RESULT_TYPES)  # one kind name per class


@pytest.mark.parametrize("result", EXAMPLES, ids=lambda r: r.kind)
def test_every_kind_round_trips_through_the_state_file(result, tmp_path):
    state = PipelineState(tmp_path)
    state.mark_done("stage", result)
    stored = json.loads((tmp_path / STATE_FILE).read_text())["stages"]["stage"]["outputs"]
    assert stored["kind"] == result.kind
    again = PipelineState.load(tmp_path).result("stage")
    assert type(again) is type(result) and again == result
    assert again.to_dict() == result.to_dict()


def test_typed_values_survive_the_round_trip(tmp_path):
    state = PipelineState(tmp_path)
    for stage, result in (("export", EXAMPLES[6]), ("quantize", EXAMPLES[8])):
        state.mark_done(stage, result)
    export = PipelineState.load(tmp_path).result("export")
    assert export.input_shape == (3, 32, 32) and export.onnx == VERDICT  # a tuple and a dataclass again
    quantized = PipelineState.load(tmp_path).result("quantize").quantization["ort"]
    assert isinstance(quantized, QuantizationResult) and quantized.delta == pytest.approx(-0.125)


def test_a_record_of_an_unknown_kind_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="not a stage result of this nasdeploy version"):
        stage_result_from_dict({"stage_skipped": "an old record"})
    (tmp_path / STATE_FILE).write_text(json.dumps({"stages": {"derive": {"status": "done", "outputs": {"kind": "x"}}}}))
    with pytest.raises(ConfigError, match="the derive stage's record is unreadable"):
        PipelineState.load(tmp_path).result("derive")


def test_the_summary_numbers_of_a_training():
    classifier, language_model, segmentation = EXAMPLES[3:6]
    assert classifier.metrics() == {"top1": pytest.approx(55.2), "top5": pytest.approx(99.8), "num_classes": 10,
                                    "chance": 10.0}
    assert classifier.headline(146.8) == "8 epochs in 147 s; final top-1 55.20% (chance: 10.00%)"
    assert "test perplexity 19.50 (vocabulary 237" in language_model.headline(58.0)
    assert segmentation.headline(46.4) == "12 epochs in 46 s; final validation mIoU 0.560 (majority-class baseline 0.198)"
