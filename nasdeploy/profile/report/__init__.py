"""Human-readable profile reports (Markdown tables that also read well in a terminal)."""

from nasdeploy.profile.report.table import comparison_table, latency_table, render_report, stage_table, op_table

__all__ = ["comparison_table", "latency_table", "stage_table", "op_table", "render_report"]
