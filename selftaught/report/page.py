"""The report page: sections of figures, tables and notes, rendered to one self-contained HTML file.

Figures are embedded as base64 PNG data URIs and the CSS is inline, so the page opens anywhere (a
laptop, a CI artifact, an e-mail attachment) with no network and no companion files.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from jinja2 import Environment


@dataclass
class Plot:
    """One PNG figure: `name` is its file name in RUN_DIR/report/ (without .png)."""

    name: str
    title: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    title: str
    intro: str = ""
    plots: list[Plot] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what is missing or odd, said plainly


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       background: #f6f7f9; color: #1d2330; line-height: 1.45; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 28px 48px; }
header { border-bottom: 2px solid #d6dae2; margin-bottom: 8px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
.meta { color: #5b6475; font-size: 14px; margin: 0 0 12px; }
section { background: #fff; border: 1px solid #e1e4ea; border-radius: 8px; padding: 16px 20px;
          margin: 18px 0; }
h2 { font-size: 20px; margin: 0 0 8px; }
figure { margin: 12px 0; }
figure img { max-width: 100%; height: auto; display: block; }
table { border-collapse: collapse; font-size: 14px; margin: 10px 0; max-width: 100%; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border: 1px solid #e1e4ea; padding: 4px 10px; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; }
th { background: #f0f2f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 10px; margin: 8px 0;
        font-size: 14px; }
code { background: #f0f2f5; padding: 1px 4px; border-radius: 3px; }
</style></head>
<body><main>
<header><h1>{{ title }}</h1><p class="meta">{{ subtitle }}</p></header>
{% for section in sections %}
<section id="{{ section.title | lower | replace(' ', '-') }}">
<h2>{{ section.title }}</h2>
{% if section.intro %}<p>{{ section.intro }}</p>{% endif %}
{% for note in section.notes %}<p class="note">{{ note }}</p>{% endfor %}
{% for plot in section.plots %}
<figure><img src="{{ plot.data_uri }}" alt="{{ plot.title }}"></figure>
{% endfor %}
{% for table in section.tables %}
<table>{% if table.caption %}<caption>{{ table.caption }}</caption>{% endif %}
<tr>{% for h in table.header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in table.rows %}<tr>{% for cell in row %}<td{% if cell | is_number %} class="num"{% endif %}>
{{- cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endfor %}
</section>
{% endfor %}
</main></body></html>
"""


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def render_page(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole HTML document; every text is escaped (run folders hold untrusted corpus text)."""
    env = Environment(autoescape=True)
    env.filters["is_number"] = _looks_numeric
    return env.from_string(TEMPLATE).render(title=title, subtitle=subtitle, sections=sections)


def format_number(value: float) -> str:
    """Four significant digits, thousands kept whole (12345 stays 12345)."""
    return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
