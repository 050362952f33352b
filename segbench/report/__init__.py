"""Reports: tables and plots rendered from records (never from anything else)."""
from __future__ import annotations

from pathlib import Path

from segbench.report import robustness
from segbench.report.plots import miou_bars
from segbench.report.tables import accuracy_table, to_markdown
from segbench.results import load_records


def render(results_dir: str | Path, out: str | Path) -> list[Path]:
    """Write report.md, accuracy.csv and miou.png for the records under ``results_dir``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(results_dir)
    table = accuracy_table(records)
    written = [out / "accuracy.csv", out / "report.md", out / "miou.png"]
    table.to_csv(written[0], index=False)
    errors = [r for r in records if r.get("status") == "error"]
    lines = [f"# segbench report: {Path(results_dir).name}", "",
             "Dataset-level mIoU / mAcc (%) from the records in this folder.", "",
             to_markdown(table), "", "![mIoU per model and protocol](miou.png)", ""]
    robustness_lines, robustness_files = robustness.render(records, Path(results_dir), out)
    lines += robustness_lines
    written += robustness_files
    if errors:
        lines += ["## Failed jobs", ""] + [f"- `{r['job_id']}` {r.get('model')} ({r['kind']}): "
                                           f"{r['error']['type']}: {r['error']['message']}" for r in errors]
    written[1].write_text("\n".join(lines) + "\n")
    miou_bars(table, written[2])
    return written
