"""A small document model rendered twice: Markdown (figures linked) and self-contained HTML
(figures inlined as base64 PNG). The evaluate node builds the blocks; nothing here computes."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}blockquote{border-left:4px solid #d9822b;background:#fff8ef;margin:1em 0;padding:.5em 1em}
img{max-width:100%;border:1px solid #eee}figure{margin:1.2em 0}figcaption{font-size:.9em;color:#555}
code{background:#f5f5f5;padding:0 .2em}
"""


@dataclass
class Report:
    """Ordered blocks: (kind, payload). Kinds: heading, text, note, bullets, table, figure."""

    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def bullets(self, items: Sequence[str]) -> None:
        if items:
            self.blocks.append(("bullets", list(items)))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.blocks.append(("table", (list(headers), [list(map(str, r)) for r in rows])))

    def figure(self, name: str, caption: str) -> None:
        self.blocks.append(("figure", (name, caption)))

    # ----------------------------------------------------------------------- renderers

    def markdown(self, figure_dir: str) -> str:
        """Markdown; figure ``name`` links to ``<figure_dir>/<name>.png`` (relative to the report)."""
        out = [f"# {self.title}", ""]
        for kind, payload in self.blocks:
            if kind == "heading":
                level, text = payload
                out += [f"{'#' * level} {text}", ""]
            elif kind == "text":
                out += [str(payload), ""]
            elif kind == "note":
                out += [f"> {line}" for line in str(payload).splitlines()] + [""]
            elif kind == "bullets":
                out += [f"- {item}" for item in payload] + [""]
            elif kind == "table":
                headers, rows = payload
                cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
                out.append("| " + " | ".join(map(cell, headers)) + " |")
                out.append("|" + "---|" * len(headers))
                out += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
                out.append("")
            elif kind == "figure":
                name, caption = payload
                out += [f"![{caption}]({figure_dir}/{name}.png)", "", f"*{caption}*", ""]
        return "\n".join(out).rstrip() + "\n"

    def html(self, figures_base64: Mapping[str, str]) -> str:
        """One self-contained HTML page: inline CSS, figures as data URIs, no external resource."""
        esc = html.escape
        body = [f"<h1>{esc(self.title)}</h1>"]
        for kind, payload in self.blocks:
            if kind == "heading":
                level, text = payload
                body.append(f"<h{level}>{esc(text)}</h{level}>")
            elif kind == "text":
                body.append(f"<p>{_inline(str(payload))}</p>")
            elif kind == "note":
                body.append("<blockquote>" + "<br>".join(_inline(line) for line in str(payload).splitlines()) + "</blockquote>")
            elif kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in payload) + "</ul>")
            elif kind == "table":
                headers, rows = payload
                head = "".join(f"<th>{_inline(h)}</th>" for h in headers)
                rows_html = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>")
            elif kind == "figure":
                name, caption = payload
                data = figures_base64.get(name)
                img = (f'<img alt="{esc(caption)}" src="data:image/png;base64,{data}">' if data
                       else f"<p><em>figure {esc(name)} not available</em></p>")
                body.append(f"<figure>{img}<figcaption>{esc(caption)}</figcaption></figure>")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(self.title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body)
            + "\n</body></html>\n"
        )


def _inline(text: str) -> str:
    """Escape, then render the two inline Markdown marks the report uses: **bold** and `code`."""
    import re

    out = html.escape(str(text))
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)
