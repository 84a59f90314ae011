"""Building blocks of the self-contained HTML pages (report.html, inspect.html): one style sheet, tables,
figures and thumbnails inlined as data: URIs, so a page is one file that reads the same offline."""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone

from .._version import __version__
from ..data.images import BadImage, load_rgb

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:34px 0 10px;border-bottom:1px solid #dde1e6;padding-bottom:4px}
.sub{color:#5b6570;margin:0 0 18px}.note{color:#5b6570;font-size:13px;margin:4px 0 10px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:14px 0}
.card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:10px 16px;min-width:130px}
.card b{display:block;font-size:22px}.card span{color:#5b6570;font-size:12px}
.card.bad b{color:#b3261e}.card.good b{color:#1e7b34}
table{border-collapse:collapse;background:#fff;border:1px solid #dde1e6;margin:6px 0 12px;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #eef0f3;text-align:right;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td:first-child,th:first-child{text-align:left}
td.path{text-align:left;font-family:ui-monospace,monospace;font-size:12px;word-break:break-all;max-width:560px}
tr.worst td{background:#fdecea}table.kv td{text-align:left}table.kv td:first-child{color:#5b6570;white-space:nowrap}
figure{margin:8px 0 14px;background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:8px;display:inline-block}
figure img{max-width:100%;display:block}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.row figure{flex:1 1 40%;max-width:fit-content}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
.tile{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:6px;width:150px;font-size:12px}
.tile img{width:150px;height:150px;object-fit:contain;background:#eef0f3;display:block;border-radius:4px}
.tile .p{font-family:ui-monospace,monospace;font-size:10px;color:#5b6570;word-break:break-all}
.tile .t{color:#1e7b34}.tile .w{color:#b3261e}.tile div{overflow-wrap:anywhere}
.missing{display:flex;width:150px;height:150px;align-items:center;justify-content:center;background:#eef0f3;color:#5b6570}
.warn{color:#b3261e;font-weight:600}
ol.next{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:10px 16px 10px 36px;margin:6px 0 12px}
ol.next li{margin:6px 0}ol.next .note{margin:0}
footer{color:#5b6570;font-size:12px;margin-top:40px}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, subtitle: str, body: str, *, footer: str = "Self-contained: every image is inlined.") -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><main>"
            f"<h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p>\n{body}\n"
            f"<footer>imgtune {esc(__version__)}, {stamp}. {esc(footer)}</footer>"
            f"</main></body></html>\n")


def section(title: str, *parts: str, note: str = "") -> str:
    return f"<h2>{esc(title)}</h2>" + (f"<p class=\"note\">{esc(note)}</p>" if note else "") + "".join(parts)


def cards(items: list[tuple[str, str, str]]) -> str:
    """(value, label, tone) where tone is "", "good" or "bad"."""
    return "<div class=\"cards\">" + "".join(
        f"<div class=\"card {tone}\"><b>{esc(v)}</b><span>{esc(label)}</span></div>" for v, label, tone in items
    ) + "</div>"


def table(headers: list[str], rows: list[list], *, path_column: int | None = None,
          highlight: set[int] | None = None) -> str:
    if not headers:  # a key-value table
        body = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows)
        return f"<table class=\"kv\"><tbody>{body}</tbody></table>"
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f"<td class=\"path\">{esc(v)}</td>" if j == path_column else f"<td>{esc(v)}</td>"
                        for j, v in enumerate(row))
        body.append(f"<tr class=\"worst\">{cells}</tr>" if highlight and i in highlight else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(png: bytes, alt: str) -> str:
    return f"<figure><img alt=\"{esc(alt)}\" src=\"data:image/png;base64,{base64.b64encode(png).decode()}\"></figure>"


def thumbnail(path: str, size: int = 150) -> str:
    """The image at `path` as an inlined JPEG thumbnail, or a grey box saying why it cannot be shown."""
    try:
        img = load_rgb(path, draft_size=size)
    except BadImage as e:
        return f"<div class=\"missing\" title=\"{esc(e)}\">not readable</div>"
    img.thumbnail((size, size))
    if min(img.size) < size // 2:  # small images are scaled up so that they can be seen
        k = size / max(img.size)
        img = img.resize((max(1, round(img.width * k)), max(1, round(img.height * k))))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return f"<img alt=\"{esc(path)}\" src=\"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}\">"


def tile(path: str, lines: list[tuple[str, str]]) -> str:
    """A thumbnail with a few captions: (text, css class)."""
    caption = "".join(f"<div class=\"{cls}\">{esc(text)}</div>" for text, cls in lines)
    return f"<div class=\"tile\">{thumbnail(path)}{caption}<div class=\"p\">{esc(path)}</div></div>"


def gallery(tiles: list[str]) -> str:
    return "<div class=\"gallery\">" + "".join(tiles) + "</div>"
