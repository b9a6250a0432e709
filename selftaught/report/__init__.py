"""`selftaught report RUN_DIR`: one self-contained HTML page (plus its PNGs) that shows a run at a glance."""

from selftaught.report.build import detect_kind, write_report

__all__ = ["detect_kind", "write_report"]
