"""``zfprobe report``: a static, browsable site (model, layer, unit and analysis pages) for any model."""
from zfprobe.report.build import ReportOptions, build_report

__all__ = ["build_report", "ReportOptions"]
