"""A self-contained report.html for a run: metrics, curves and confusion matrix, images inline."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import yaml

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:14px} td,th{padding:3px 10px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.cards{display:flex;gap:1em;flex-wrap:wrap}
.card{background:#f6f8fa;border-radius:8px;padding:.6em 1.2em}
.card b{display:block;font-size:1.5em} img{max-width:100%} .muted{color:#777}
"""


def _img(path: Path) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def write_report(run_dir: Path, metrics: dict) -> Path:
    """Write run_dir/report.html from the run's files and `metrics`."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (
        run_dir / "config.yaml").is_file() else {}  # fmt: skip
    cards = "".join(
        f'<div class="card">{name}<b>{100 * metrics[key]:.2f}%</b></div>'
        for name, key in (("accuracy", "accuracy"), ("top-5", "top5"), ("macro F1", "macro_f1"))
    )
    rows = "".join(
        f"<tr><td>{html.escape(c['class'])}</td><td>{c['precision']:.3f}</td>"
        f"<td>{c['recall']:.3f}</td><td>{c['f1']:.3f}</td><td>{c['support']}</td></tr>"
        for c in metrics["per_class"]
    )
    settings = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in cfg.items()
    )
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>convlens report: {html.escape(run_dir.name)}</title><style>{STYLE}</style></head><body>
<h1>{html.escape(run_dir.name)}</h1>
<p class="muted">{html.escape(str(cfg.get("model", "")))} on {html.escape(str(metrics["data"]))},
{metrics["split"]} split, {metrics["n"]} images</p>
<div class="cards">{cards}</div>
<h2>Training curves</h2>{_img(run_dir / "curves.png")}
<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>
<th>support</th></tr>{rows}</table>
<h2>Confusion matrix</h2>{_img(run_dir / "confusion_matrix.png")}
<h2>Settings</h2><table>{settings}</table>
</body></html>"""
    out = run_dir / "report.html"
    out.write_text(page)
    return out
