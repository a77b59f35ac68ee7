"""A tiny document model rendered to both Markdown and self-contained HTML (no extra dependencies)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Image:
    src: str
    alt: str


@dataclass
class Code:
    text: str
    summary: str = ""


@dataclass
class Document:
    title: str
    blocks: list = field(default_factory=list)

    def add(self, block) -> None:
        self.blocks.append(block)

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if isinstance(b, Heading):
                out += ["#" * b.level + " " + b.text, ""]
            elif isinstance(b, Paragraph):
                out += [b.text, ""]
            elif isinstance(b, Table):
                if b.caption:
                    out += [f"*{b.caption}*", ""]
                out.append("| " + " | ".join(_md_cell(c) for c in b.columns) + " |")
                out.append("| " + " | ".join("---" for _ in b.columns) + " |")
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
                out.append("")
            elif isinstance(b, Image):
                out += [f"![{b.alt}]({b.src})", ""]
            elif isinstance(b, Code):
                if b.summary:
                    out += [f"<details><summary>{html.escape(b.summary)}</summary>", ""]
                out += ["```", b.text.rstrip("\n"), "```", ""]
                if b.summary:
                    out += ["</details>", ""]
        return "\n".join(out)

    def html(self) -> str:
        esc = html.escape
        out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{esc(self.title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
               "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
               "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
               "img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto}</style>",
               "</head><body>", f"<h1>{esc(self.title)}</h1>"]
        for b in self.blocks:
            if isinstance(b, Heading):
                out.append(f"<h{b.level}>{esc(b.text)}</h{b.level}>")
            elif isinstance(b, Paragraph):
                out.append(f"<p>{esc(b.text)}</p>")
            elif isinstance(b, Table):
                out.append("<table>")
                if b.caption:
                    out.append(f"<caption>{esc(b.caption)}</caption>")
                out.append("<tr>" + "".join(f"<th>{esc(c)}</th>" for c in b.columns) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in b.rows]
                out.append("</table>")
            elif isinstance(b, Image):
                out.append(f"<p><img src=\"{esc(b.src)}\" alt=\"{esc(b.alt)}\"></p>")
            elif isinstance(b, Code):
                pre = f"<pre>{esc(b.text)}</pre>"
                out.append(f"<details><summary>{esc(b.summary)}</summary>{pre}</details>" if b.summary else pre)
        out.append("</body></html>")
        return "\n".join(out) + "\n"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
