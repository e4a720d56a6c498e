"""Run reports: loss/accuracy curves (PNG) and ``report.md`` (teacher vs student)."""

from featdistill.report.plots import plot_run
from featdistill.report.summary import ModelSummary, summarize_model, write_report

__all__ = ["plot_run", "ModelSummary", "summarize_model", "write_report"]
