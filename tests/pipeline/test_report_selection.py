"""The report's selection section and collapse warnings, from typed search results (no search runs here)."""

from __future__ import annotations

from nasdeploy.genotypes import genotype_to_dict, get_genotype
from nasdeploy.pipeline.report import render_report
from nasdeploy.pipeline.results import SearchStageResult, SeedRow, SelectionSummary, stage_result_from_dict
from nasdeploy.pipeline.selection_stage import derived_macs
from nasdeploy.pipeline.summary import RunSummary

WARNING = "the derived normal cell holds 4 parameter-free ops of 8 (skip_connect)"


def _search(selection: SelectionSummary | None = None, warnings: tuple[str, ...] = ()) -> SearchStageResult:
    return SearchStageResult(epochs=2, order="first", mixed_op="fused", warnings=warnings, selection=selection)


def _report(search: SearchStageResult) -> str:
    return render_report(RunSummary(name="t", space="darts_cnn", version="0", config="t.yaml", times={}, search=search))


def _selection() -> SelectionSummary:
    v2, v1 = (genotype_to_dict(get_genotype(n)) for n in ("DARTS_V2", "DARTS_V1"))
    rows = (SeedRow(seed=0, genotype=v2, metric=0.5, derived_macs=5.74e8, normal_skips=2, parameter_free_ops=2,
                    search_time_s=12.4, train_time_s=3.0, search_dir="seed-0/search", chosen=True),
            SeedRow(seed=3, genotype=v1, metric=0.25, normal_skips=4, parameter_free_ops=4, warnings=(WARNING,),
                    search_dir="seed-3/search"))
    return SelectionSummary(metric="top1", higher_is_better=True, chosen_seed=0, mean=0.375, std=0.1768, seeds=rows)


def test_selection_rows_warnings_and_round_trip():
    search = _search(_selection())
    assert stage_result_from_dict(search.to_dict()) == search
    assert search.run_folder == "search/seed-0/search"
    report = _report(search)
    section = report.split("## Selection over seeds", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| seed")]
    assert rows[0].startswith("| 0 | `N: sep3<-0 sep3<-1 ") and "| 574.0M | 2 | 2 | 50.00% | 12 | 3 | **chosen** |" in rows[0]
    assert rows[1].startswith("| 3 | ") and "| - | 4 | 4 | 25.00% | - | - |  |" in rows[1]
    assert all(line.count(" | ") == 8 for line in rows)  # the genotype's short form holds no column separator
    assert "top1 over 2 seeds: 37.50% +- 17.68%" in section and "chosen: seed 0" in section
    assert f"**Collapse warning** (seed 3): {WARNING}." in report and "(seed 0" not in report.split("## Selection")[0]


def test_a_single_search_warns_and_shows_no_selection():
    report = _report(_search(warnings=(WARNING,)))
    assert f"**Collapse warning** (the search): {WARNING}." in report and "Selection over seeds" not in report
    report = _report(_search())
    assert "Collapse warning" not in report and "Selection over seeds" not in report


def test_derived_macs_from_a_budget_record():
    assert derived_macs({"metric": "macs", "derived": 5.0e8, "target": 6e8}) == 5.0e8
    assert derived_macs({"metric": "latency_ms", "derived": 3.2, "derived_macs": 4.5e8}) == 4.5e8
    assert derived_macs({"metric": "latency_ms", "derived": 3.2}) is None
    assert derived_macs(None) is None
