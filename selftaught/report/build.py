"""Detect what kind of run a folder holds and write its report: RUN_DIR/report/index.html and PNGs."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from selftaught.data.loading import DataError
from selftaught.report.backtranslate import backtranslation_sections
from selftaught.report.distill import distill_sections
from selftaught.report.page import render_page

BUILDERS = {"backtranslation": backtranslation_sections, "distillation": distill_sections}
MARKERS = {  # files or folders only that kind of run writes; backtranslation first (both write eval_results)
    "backtranslation": ("summary.json", "models", "seed", "segments"),
    "distillation": ("metrics.jsonl", "evaluation", "eval_results.json", "README.md"),
}


def detect_kind(run: Path) -> str:
    """'distillation' or 'backtranslation', from the files in the folder."""
    for kind, names in MARKERS.items():
        if any((run / name).exists() for name in names):
            return kind
    raise DataError(
        f"{run}: not a selftaught run folder (no summary.json or models/ of `selftaught backtranslate`, "
        "no metrics.jsonl or eval_results.json of `selftaught distill`); "
        "pass a run's --output_dir or --run_dir"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report/index.html (self-contained) and each figure as a PNG beside it."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    kind = detect_kind(run)
    sections = BUILDERS[kind](run)
    out = run / "report"
    out.mkdir(exist_ok=True)
    for stale in out.glob("*.png"):  # a figure the run no longer has must not linger from an older report
        stale.unlink()
    for plot in (p for s in sections for p in s.plots):
        (out / f"{plot.name}.png").write_bytes(plot.png)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    name = run.resolve().name  # the run by its folder's name: a page never shows a path of this machine
    html = render_page(f"selftaught {kind} run: {name}", f"run folder {name} · report of {when}", sections)
    page = out / "index.html"
    page.write_text(html, encoding="utf-8")
    return page
