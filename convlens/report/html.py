"""Building blocks of report.html: the stylesheet and small tags (images inline as base64)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """
:root{--ink:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#f6f7f9;--card:#fff;--accent:#2563eb;
--warm:#ea580c;--good:#15803d;--bad:#b91c1c}
*{box-sizing:border-box}
body{margin:0;font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--ink);background:var(--bg)}
.wrap{max-width:1080px;margin:0 auto;padding:0 24px}
header{background:linear-gradient(135deg,#1e3a8a,#2563eb);color:#fff;padding:28px 0 22px}
.kicker{text-transform:uppercase;letter-spacing:.12em;font-size:12px;opacity:.75}
h1{margin:.15em 0 .1em;font-size:30px;font-weight:650}
.sub{margin:0 0 18px;opacity:.9}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:rgba(255,255,255,.12);border:1px solid rgba(255,255,255,.22);border-radius:10px;
padding:10px 16px;min-width:128px}
.card span{display:block;font-size:12px;opacity:.8}
.card b{display:block;font-size:22px;font-weight:650;font-variant-numeric:tabular-nums}
nav{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line)}
nav .wrap{display:flex;flex-wrap:wrap;gap:4px 18px;padding-top:10px;padding-bottom:10px}
nav a{color:var(--muted);text-decoration:none;font-size:13px;font-weight:550}
nav a:hover{color:var(--accent)}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;
padding:18px 24px 22px;margin:22px 0;scroll-margin-top:56px}
h2{margin:0 0 12px;font-size:19px;font-weight:650}
h3{margin:18px 0 8px;font-size:15px;font-weight:600;color:#374151}
p{margin:0 0 12px;max-width:78ch}
img{max-width:100%;height:auto;display:block}
.note{color:var(--muted);font-style:italic}
table.grid{border-collapse:collapse;font-size:14px;font-variant-numeric:tabular-nums;
width:100%}
table.narrow{width:auto;min-width:320px}
.grid th{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);
font-weight:600;border-bottom:2px solid var(--line)}
.grid td,.grid th{padding:6px 12px;text-align:right;white-space:nowrap}
.grid td:first-child,.grid th:first-child,.grid .left{text-align:left}
.grid tbody tr:nth-child(even){background:#fafafa}
.grid tr.worst td:first-child{color:var(--bad);font-weight:600}
.grid tr.total td{border-top:2px solid var(--line);font-weight:600}
td.up{color:var(--good);font-weight:600} td.down{color:var(--bad);font-weight:600}
.grid td.barcell{width:30%;text-align:left}
.bar{position:relative;height:20px;background:#eef2ff;border-radius:4px;min-width:120px}
.bar i{position:absolute;left:0;top:0;bottom:0;background:#93c5fd;border-radius:4px}
.bar span{position:relative;padding:0 6px;line-height:20px}
.scroll{overflow-x:auto}
.mistakes{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:14px}
.mistake{margin:0;border:1px solid var(--line);border-radius:10px;padding:10px;background:#fcfcfd}
.pair{display:flex;gap:6px}
.pair img{width:50%;image-rendering:pixelated;border-radius:4px}
figcaption{margin-top:8px;font-size:13px} figcaption b{color:var(--warm)}
figcaption span{color:var(--muted)}
.split{display:flex;flex-wrap:wrap;gap:20px;align-items:flex-start}
.split img{flex:1 1 640px;min-width:0}
details summary{cursor:pointer;color:var(--accent);margin-bottom:8px}
footer{color:var(--muted);font-size:12px;padding-bottom:32px}
@media print{nav{display:none}section{break-inside:avoid;border:0}}
"""


def img(data: bytes, alt: str) -> str:
    """An <img> holding PNG bytes inline."""
    src = base64.b64encode(data).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{src}">'


def img_file(path: Path, alt: str) -> str:
    """An inline <img> of a PNG file, or "" when there is no such file."""
    return img(path.read_bytes(), alt) if path.is_file() else ""


def note(text: str) -> str:
    """A muted line that says why something is not shown."""
    return f'<p class="note">{html.escape(text)}</p>'


def table(head: list[str], rows: list[str], cls: str = "grid", left: tuple[int, ...] = ()) -> str:
    """A table from header cells (HTML) and ready-made <tr> rows; `left`: left-aligned columns."""
    cells = "".join(
        f'<th class="left">{h}</th>' if i in left else f"<th>{h}</th>" for i, h in enumerate(head)
    )
    body = "".join(rows)
    return f'<table class="{cls}"><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>'


def cards(items: list[tuple[str, str]]) -> str:
    """The header's summary cards from (label, value) pairs; the values are HTML."""
    cells = "".join(
        f'<div class="card"><span>{html.escape(k)}</span><b>{v}</b></div>' for k, v in items
    )
    return f'<div class="cards">{cells}</div>'


def page(title: str, kicker: str, sub: str, top: str, sections: dict[str, tuple[str, str]]) -> str:
    """A whole report.html: a header (kicker, title, `sub` and `top`: HTML), a bar of links and
    one <section> per {id: (title, HTML)}."""
    nav = "".join(f'<a href="#{k}">{html.escape(t)}</a>' for k, (t, _) in sections.items())
    body = "".join(
        f'<section id="{k}"><h2>{html.escape(t)}</h2>{v}</section>'
        for k, (t, v) in sections.items()
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>convlens report: {html.escape(title)}</title><style>{STYLE}</style></head><body>
<header><div class="wrap"><div class="kicker">{html.escape(kicker)}</div>
<h1>{html.escape(title)}</h1>
<p class="sub">{sub}</p>{top}</div></header>
<nav><div class="wrap">{nav}</div></nav>
<main class="wrap">{body}</main>
</body></html>
"""


def settings_table(cfg: dict) -> str:
    """The run's resolved settings as a collapsed HTML table (every report shows it)."""
    if not cfg:
        return note("no config.yaml in this run folder")
    rows = [
        f'<tr><td>{html.escape(str(k))}</td><td class="left">{html.escape(str(v))}</td></tr>'
        for k, v in cfg.items()
    ]
    return (
        f"<details><summary>{len(cfg)} resolved settings (config.yaml)</summary>"
        f"{table(['setting', 'value'], rows, cls='grid narrow', left=(1,))}</details>"
    )
