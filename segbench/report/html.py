"""The report as one self-contained HTML page: inline CSS, plots embedded as data URIs,
system fonts, no scripts. It opens from disk with no network and can be mailed as one file."""
from __future__ import annotations

import base64
from html import escape

from segbench.report.document import Figure, Section
from segbench.report.tables import Table, formatted_rows, header_groups, numeric, sub_names

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1d2430; margin: 0 auto; max-width: 1440px; padding: 1.5rem 2rem 4rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #d7dce3; padding-bottom: .25rem; margin-top: 2.4rem; }
nav ol { columns: 2; padding-left: 1.2rem; }
a { color: #1f5fbf; }
figure { margin: 1.2rem 0; }
figcaption { font-size: .92rem; margin: .3rem 0 .5rem; color: #3b4554; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .84rem; font-variant-numeric: tabular-nums; }
thead tr:first-child th { border-top: 2px solid #1d2430; }
thead tr:last-child th { border-bottom: 1px solid #1d2430; }
tbody tr:last-child td { border-bottom: 2px solid #1d2430; }
th, td { padding: .22rem .42rem; text-align: left; white-space: nowrap; }
th { white-space: normal; vertical-align: bottom; min-width: 3.2rem; }
th.group { text-align: center; border-bottom: 1px solid #8a94a3; }
td.num, th.num { text-align: right; }
tbody tr:nth-child(even) { background: #f4f6f9; }
ul.notes { font-size: .82rem; color: #4a5566; margin: .4rem 0; padding-left: 1.2rem; }
p.files { font-size: .8rem; color: #6a7382; margin: .2rem 0; }
img { max-width: 100%; height: auto; border: 1px solid #e3e7ec; }
footer { margin-top: 3rem; font-size: .8rem; color: #6a7382; }
"""


def _table_html(table: Table) -> str:
    frame = table.frame
    nums = [numeric(frame, c) for c in frame.columns]
    head = []
    groups = header_groups(frame)
    if groups and any(span > 1 for _, span in groups):
        cells = "".join(f'<th colspan="{span}" class="group">{escape(label)}</th>' if span > 1 else "<th></th>"
                        for label, span in groups)
        head.append(f"<tr>{cells}</tr>")
    head.append("<tr>" + "".join(f'<th class="{"num" if n else ""}">{escape(name)}</th>'
                                 for name, n in zip(sub_names(frame), nums)) + "</tr>")
    body = ["<tr>" + "".join(f'<td class="{"num" if n else ""}">{escape(v)}</td>' for v, n in zip(row, nums)) + "</tr>"
            for row in formatted_rows(frame)]
    notes = "".join(f"<li>{escape(n)}</li>" for n in table.notes)
    return (f'<figure class="table" id="table-{escape(table.name)}" data-table="{escape(table.name)}">'
            f"<figcaption><b>{escape(table.title)}.</b> {escape(table.caption)}</figcaption>"
            f'<div class="scroll"><table><thead>{"".join(head)}</thead><tbody>{"".join(body)}</tbody></table></div>'
            + (f'<ul class="notes">{notes}</ul>' if notes else "")
            + f'<p class="files"><a href="{escape(table.name)}.csv">CSV</a> · '
              f'<a href="{escape(table.name)}.tex">LaTeX</a></p></figure>')


def _figure_html(figure: Figure) -> str:
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    return (f'<figure class="plot" id="figure-{escape(figure.path.stem)}" data-figure="{escape(figure.path.stem)}">'
            f'<img alt="{escape(figure.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{escape(figure.title)}.</b> {escape(figure.caption)}</figcaption></figure>")


def page(title: str, intro: str, sections: list[Section], footer: str = "") -> str:
    toc = "".join(f'<li><a href="#section-{i}">{escape(s.title)}</a></li>' for i, s in enumerate(sections))
    parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
             f'<meta name="viewport" content="width=device-width, initial-scale=1">'
             f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<header><h1>{escape(title)}</h1><p>{escape(intro)}</p><nav><ol>{toc}</ol></nav></header>"]
    for i, section in enumerate(sections):
        parts.append(f'<section id="section-{i}"><h2>{escape(section.title)}</h2>')
        if section.text:
            parts.append(f"<p>{escape(section.text)}</p>")
        parts += [_table_html(t) for t in section.tables]
        parts += [_figure_html(f) for f in section.figures]
        if section.items:
            parts.append("<ul>" + "".join(f"<li>{escape(item)}</li>" for item in section.items) + "</ul>")
        parts.append("</section>")
    parts.append(f"<footer>{escape(footer)}</footer></body></html>\n")
    return "".join(parts)

