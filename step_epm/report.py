"""Self-contained HTML reports: headings, paragraphs, tables and matplotlib
figures embedded as base64 PNG (one file to mail or archive, no folder of
images to lose).

    rep = HtmlReport("Softness model")
    rep.paragraph("Trained on 4 trajectories.")
    rep.table(["quantity", "value"], [["accuracy", "0.91"]])
    rep.figure(fig, "P(S) per species")     # closes the figure
    rep.write("report.html")               # atomic write
"""

import base64
import html
import io
import os
from datetime import datetime, timezone
from pathlib import Path

from .provenance import code_version

_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #444; }
img { max-width: 100%; } .meta { color: #666; font-size: 0.85em; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; font-size: 0.8em; }
tr.pass td { background: #e3f2e3; } tr.fail td { background: #f8dede; }
tr.undecided td { background: #eeeeee; color: #666; }
"""


class HtmlReport:
    """An HTML document built in order; :meth:`write` saves it."""

    def __init__(self, title: str):
        self.title = title
        self.parts = [f"<h1>{html.escape(title)}</h1>",
                      f"<p class='meta'>step-epm {html.escape(code_version())}, "
                      f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}</p>"]

    def heading(self, text: str, level: int = 2):
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str):
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def preformatted(self, text: str):
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def table(self, header, rows, row_classes=None):
        """header: list of column names; rows: lists of cells (str() of each);
        row_classes: optional CSS class per row ("pass", "fail", "undecided")."""
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        classes = row_classes or [""] * len(rows)
        body = "".join((f"<tr class='{html.escape(c)}'>" if c else "<tr>")
                       + "".join(f"<td>{html.escape(str(x))}</td>" for x in row)
                       + "</tr>" for row, c in zip(rows, classes))
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def figure(self, fig, caption: str, dpi: int = 110):
        """Embed a matplotlib figure as PNG and close it."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        data = base64.b64encode(buf.getvalue()).decode()
        self.parts.append(f"<figure><img src='data:image/png;base64,{data}'>"
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def write(self, path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'>"
                       f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style>"
                       "</head><body>" + "\n".join(self.parts) + "</body></html>")
        os.replace(tmp, path)
        return path
