"""report.html for a comparison: one self-contained page (images beside it, linked relatively).

The page holds the suite's settings, the metrics table (click a header to sort; numbers sort
as numbers), the world metric's ranking, the metrics per prompt, the skipped metrics and why,
each variant's ControlNet units with their control maps, the grids, each run's loss curve and
validation grids, and every image, variant by variant beside the control maps it used, captioned
with its variant, seed, prompt and scores (as A1111 writes under an image). Long labels and prompts
wrap; nothing is cut. No external scripts, styles or fonts.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;
overflow-wrap:anywhere;max-width:40em}
th{background:#f2f2f2;cursor:pointer;user-select:none}th:first-child,td:first-child{text-align:left}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
img{image-rendering:pixelated;max-width:100%}.cells img{width:128px;height:128px}
.cells figure{display:inline-block;margin:4px;font-size:11px;width:132px;vertical-align:top;overflow-wrap:anywhere}
.cells figure.control{background:#eef3ff}.units img{width:96px;height:96px}figcaption{white-space:normal}
.note{color:#8a4b00}code{background:#f5f5f5;padding:1px 3px}
"""

SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var down = th.getAttribute('aria-sort') !== 'descending';
      table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', down ? 'descending' : 'ascending');
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
        var nx = parseFloat(x), ny = parseFloat(y);
        var r = (isNaN(nx) || isNaN(ny)) ? String(x).localeCompare(String(y)) : nx - ny;
        return down ? -r : r;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


@dataclass
class ReportData:
    title: str
    settings: dict[str, str]  # suite settings shown at the top
    columns: list[tuple[str, str]]  # (metric key, header)
    rows: list[dict]  # per variant: label, settings text, images, and metric means (None when not computed)
    skipped: dict[str, str]  # metric -> why it was skipped
    grids: list[tuple[str, str]]  # (caption, relative path)
    runs: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)  # (label, [(caption, path)])
    images: list[dict] = field(default_factory=list)  # per image: file, variant, prompt, seed, scores
    notes: list[str] = field(default_factory=list)
    controls: list[tuple[str, list[tuple[str, str, str]]]] = field(default_factory=list)  # per variant:
    # (label, [(unit description, control map path, source image)]); empty when no variant uses ControlNet
    prompts: list[dict] = field(default_factory=list)  # per variant and prompt: variant, prompt, images, metric means
    ranking: list[str] = field(default_factory=list)  # the world metric's ranking, one line per variant


def _cell(value) -> str:
    if value is None:
        return "<td data-value=''>–</td>"
    if isinstance(value, float):
        return f"<td data-value='{value:.6f}'>{value:.4f}</td>"
    return f"<td data-value='{html.escape(str(value), quote=True)}'>{html.escape(str(value))}</td>"


def _image_figure(image: dict) -> str:
    e = html.escape
    scores = ", ".join(f"{k} {v:.3f}" for k, v in image["scores"].items() if v is not None)
    tip = f"{image['variant']} | {image['prompt']} | seed {image['seed']}"
    return (f"<figure><img src='{e(image['file'], quote=True)}' title='{e(tip, quote=True)}' "
            f"alt='{e(tip, quote=True)}'>"
            f"<figcaption class='caption'><span class='prompt'>{e(image['prompt'])}</span><br>seed {image['seed']}, "
            f"{e(image['variant'])}<br>{e(scores)}</figcaption></figure>")


def render_report(data: ReportData) -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><meta charset='utf-8'><title>{e(data.title)}</title>",
             f"<style>{STYLE}</style><h1>{e(data.title)}</h1>"]
    parts.append("<table><tbody>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in data.settings.items())
                  + "</tbody></table>")
    # 1. the metrics table, one row per variant
    parts.append("<h2>Metrics</h2><p>Means over every prompt and seed of a variant. Click a column to sort.</p>")
    head = "".join(f"<th>{e(h)}</th>" for h in ["variant", "settings", "images"] + [t for _, t in data.columns])
    body = "".join("<tr>" + _cell(r["label"]) + _cell(r["settings"]) + _cell(r["images"])
                   + "".join(_cell(r.get(k)) for k, _ in data.columns) + "</tr>" for r in data.rows)
    parts.append(f"<table class='sortable' id='metrics'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    if data.skipped:
        parts.append("<p class='note'>Skipped metrics:</p><ul>" + "".join(
            f"<li class='note'><b>{e(k)}</b>: {e(v)}</li>" for k, v in data.skipped.items()) + "</ul>")
    parts += [f"<p class='note'>{e(n)}</p>" for n in data.notes]
    if data.ranking:
        parts.append("<h2>Ranking</h2><p>By the world checker: subject fidelity, then prompt fidelity, then prior."
                     "</p><ol id='ranking'>" + "".join(f"<li>{e(line.split('. ', 1)[1])}</li>" for line in data.ranking)
                     + "</ol>")
    if data.prompts:
        parts.append("<h2>Per prompt</h2><p>Means over the seeds of each prompt (– where a metric does not apply)."
                     "</p>")
        head = "".join(f"<th>{e(h)}</th>" for h in ["variant", "prompt", "images"] + [t for _, t in data.columns])
        body = "".join("<tr>" + _cell(r["variant"]) + _cell(r["prompt"]) + _cell(r["images"])
                       + "".join(_cell(r.get(k)) for k, _ in data.columns) + "</tr>" for r in data.prompts)
        parts.append(f"<table class='sortable' id='per-prompt'><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
                     "</table>")
    # 2. ControlNet units per variant, each with the control map it used
    maps = {label: units for label, units in data.controls}
    if data.controls:
        parts.append("<h2>ControlNet units</h2><table class='units'><thead><tr><th>variant</th><th>unit</th>"
                     "<th>control map</th></tr></thead><tbody>")
        for label, units in data.controls:
            parts += [f"<tr><td>{e(label)}</td><td>{e(text)}<br><small>from {e(source)}</small></td><td><img "
                      f"src='{e(path, quote=True)}' alt='{e(text, quote=True)}'></td></tr>"
                      for text, path, source in units]
            if not units:
                parts.append(f"<tr><td>{e(label)}</td><td>no ControlNet</td><td></td></tr>")
        parts.append("</tbody></table>")
    # 3. grids: rows variants, columns prompts
    parts.append("<h2>Grids</h2>")
    parts += [f"<figure><img src='{e(path, quote=True)}' alt='{e(caption, quote=True)}'><figcaption>{e(caption)}"
              "</figcaption></figure>" for caption, path in data.grids]
    # 4. training runs: loss curves and validation grids
    if data.runs:
        parts.append("<h2>Training runs</h2>")
        for label, files in data.runs:
            parts.append(f"<h3>{e(label)}</h3>")
            parts += [f"<figure><img src='{e(path, quote=True)}' alt='{e(caption, quote=True)}'><figcaption>"
                      f"{e(caption)}</figcaption></figure>" for caption, path in files]
    # 5. every image, variant by variant beside its control maps, captioned as A1111 does: prompt, seed, variant
    if data.images:
        parts.append("<h2>Every image</h2>")
        for label in dict.fromkeys(image["variant"] for image in data.images):
            parts.append(f"<h3>{e(label)}</h3><div class='cells'>")
            parts += [f"<figure class='control'><img src='{e(path, quote=True)}' alt='{e(text, quote=True)}'>"
                      f"<figcaption>control map: {e(text)}</figcaption></figure>"
                      for text, path, _ in maps.get(label, ())]
            parts += [_image_figure(image) for image in data.images if image["variant"] == label]
            parts.append("</div>")
    parts.append(f"<script>{SORT_SCRIPT}</script></html>")
    return "\n".join(parts)
