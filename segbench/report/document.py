"""A report as sections of tables and figures, written as Markdown (report.md), LaTeX
(report.tex: a complete document; every table also alone in <name>.tex, ready to paste)
and CSV (<name>.csv). The HTML page is ``html.py``'s."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from segbench.report.tables import LATEX_PREAMBLE, Table, latex_escape, to_csv, to_latex, to_markdown


@dataclass
class Figure:
    path: Path  # a PNG in the report folder
    title: str
    caption: str = ""


@dataclass
class Section:
    title: str
    text: str = ""  # a paragraph: what the numbers are and how they were measured
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    items: list[str] = field(default_factory=list)  # a bullet list (failed jobs, incomplete sweeps)


def write_tables(sections: list[Section], out: Path) -> list[Path]:
    """<name>.csv and <name>.tex of every table."""
    written = []
    for section in sections:
        for table in section.tables:
            to_csv(table.frame, out / f"{table.name}.csv")
            (out / f"{table.name}.tex").write_text(to_latex(table))
            written += [out / f"{table.name}.csv", out / f"{table.name}.tex"]
    return written


def markdown(title: str, intro: str, sections: list[Section]) -> str:
    lines = [f"# {title}", "", intro, ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.text:
            lines += [section.text, ""]
        for table in section.tables:
            lines += [f"**{table.title}.** {table.caption}".rstrip(), "", to_markdown(table.frame), ""]
            lines += [f"- {note}" for note in table.notes] + ([""] if table.notes else [])
            lines += [f"CSV: [{table.name}.csv]({table.name}.csv), LaTeX: [{table.name}.tex]({table.name}.tex)", ""]
        for figure in section.figures:
            lines += [f"![{figure.title}]({figure.path.name})", ""]
            if figure.caption:
                lines += [f"*{figure.title}.* {figure.caption}", ""]
        lines += [f"- {item}" for item in section.items] + ([""] if section.items else [])
    return "\n".join(lines)


def latex_document(title: str, intro: str, sections: list[Section]) -> str:
    """The whole report as one compilable document (pdflatex: booktabs, longtable, graphicx)."""
    lines = [LATEX_PREAMBLE, r"\begin{document}", rf"\section*{{{latex_escape(title)}}}", latex_escape(intro), ""]
    for section in sections:
        lines += [rf"\subsection*{{{latex_escape(section.title)}}}", latex_escape(section.text), ""]
        lines += [to_latex(table) for table in section.tables]
        for figure in section.figures:
            lines += [r"\begin{figure}[htbp]", r"\centering",
                      rf"\includegraphics[width=\linewidth,height=0.8\textheight,keepaspectratio]{{{figure.path.name}}}",
                      rf"\caption{{{latex_escape(figure.title + ('. ' + figure.caption if figure.caption else ''))}}}",
                      r"\end{figure}", ""]
        if section.items:
            lines += [r"\begin{itemize}", *(rf"\item {latex_escape(item)}" for item in section.items),
                      r"\end{itemize}", ""]
        lines.append(r"\clearpage")
    lines.append(r"\end{document}")
    return "\n".join(lines) + "\n"
