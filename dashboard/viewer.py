"""The record view's image viewer: the radiograph at up to VIEW_MAX_SIDE px with zoom and pan,
window/level computed in the browser (with the DICOM file's own windows as presets), and the heat
map and fracture boxes as overlays that toggle and fade. No Streamlit in here.

How the pixels travel: the page embeds a small self-contained viewer (dashboard/viewer.js, no
CDN) in an iframe, with a per-session link to its pixels, `/viewer/pixels/<token>`. A link is a
random token registered in this process for one source and, with a password set, one sign-in
cookie: the gate (dashboard/access.py) refuses it without a valid cookie, and this handler
refuses it with any cookie but the one it was issued to, or after Sign out. The image goes as a
lossless PNG whose red and green bytes carry 16 bits of grey, so the browser windows the stored
dynamic range, not an 8-bit copy, with no server round trip per step.
"""

from __future__ import annotations

import html
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from dashboard import access

# 4096 px on the longer side: every radiograph shown at (or near) full resolution for a 4x zoom
# on a 2,000 px column, while one canvas stays within 4096 x 4096 = 16.7 Mpx, the largest that
# Safari on a phone or tablet draws, and windowing a step stays under ~50 ms in the browser.
VIEW_MAX_SIDE = 4096
PIXELS_PATH = "/viewer/pixels/"
MAX_LINKS = 4096
ENCODED_CACHE = 6  # encoded images kept in memory (a few MB each)
_SCRIPT = Path(__file__).with_name("viewer.js")


@dataclass(frozen=True)
class Source:
    """What a link serves: a radiograph (path + sha256), or a heat map (a stored grid's path or
    the grid itself, computed on request)."""

    kind: str  # "image" or "heat"
    path: str
    sha256: str = ""
    max_pixels: int = 0
    grid: tuple[tuple[float, ...], ...] | None = None  # a computed map, rows of [0, 1]


@dataclass
class _Link:
    source: Source
    cookie: str | None  # the sign-in cookie it was issued to; None with no password
    expires: float


@dataclass
class Links:
    """Per-session links to viewer pixels, shared by the page runs and the handler."""

    clock: Callable[[], float] = time.time
    _links: OrderedDict[str, _Link] = field(default_factory=OrderedDict)
    _by_key: dict[tuple[Source, str | None], str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, source: Source, cookie: str | None) -> str:
        """The link for this source and this sign-in (the same one while it lives, so a page
        run redraws nothing the browser already has)."""
        now = self.clock()
        with self._lock:
            token = self._by_key.get((source, cookie))
            link = self._links.get(token) if token else None
            if token is None or link is None or link.expires <= now:
                token = secrets.token_urlsafe(24)
                self._by_key[(source, cookie)] = token
            self._links[token] = _Link(source, cookie, now + access.LIFETIME_S)
            self._links.move_to_end(token)
            while len(self._links) > MAX_LINKS:
                _, link = self._links.popitem(last=False)
                self._by_key.pop((link.source, link.cookie), None)
        return PIXELS_PATH + token

    def resolve(self, token: str, cookie: str | None) -> Source | None:
        """The source behind a live link presented with the cookie it was issued to."""
        with self._lock:
            link = self._links.get(token)
        if link is None or link.expires <= self.clock():
            return None
        if link.cookie is not None and not secrets.compare_digest(link.cookie, cookie or ""):
            return None
        return link.source


LINKS = Links()


# -- pixels -------------------------------------------------------------------------------------


def encode_grey16(pixels: np.ndarray) -> bytes:
    """Greyscale in [0, 1] as a lossless RGB PNG: red the high byte of 16 bits, green the low."""
    import cv2

    grey = np.rint(np.clip(pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)
    bgr = np.zeros((*grey.shape, 3), dtype=np.uint8)
    bgr[..., 2] = grey >> 8
    bgr[..., 1] = grey & 0xFF
    ok, png = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("the image could not be encoded for display")
    return png.tobytes()


def decode_grey16(png: bytes) -> np.ndarray:
    """The inverse of encode_grey16 (what the browser does), for tests: uint16 (H, W)."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a PNG")
    return (bgr[..., 2].astype(np.uint16) << 8) | bgr[..., 1].astype(np.uint16)


def encode_heat(grid: np.ndarray) -> bytes:
    """A heat map (any size, [0, 1]) as a jet-coloured RGBA PNG at its own size; cold areas
    transparent, so the radiograph shows through where the model sees nothing."""
    import cv2

    values = np.clip(np.nan_to_num(grid.astype(np.float32)), 0.0, 1.0)
    bgr = cv2.applyColorMap((values * 255.0).round().astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (np.clip(values * 2.0, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    ok, png = cv2.imencode(".png", np.dstack([bgr, alpha]))
    if not ok:
        raise ValueError("the heat map could not be encoded for display")
    return png.tobytes()


@lru_cache(maxsize=ENCODED_CACHE)
def rendered(source: Source) -> tuple[bytes, dict[str, str]]:
    """The PNG for a source and headers the viewer reads (the original's upright size, the
    frame the fracture boxes are given in)."""
    if source.kind == "heat":
        if source.grid is not None:
            grid = np.asarray(source.grid, dtype=np.float32)
        else:
            from model.explain import load_map

            grid = load_map(Path(source.path))
        return encode_heat(grid), {}
    from dashboard.services import display_pixels
    from model.decode import decode
    from model.files import read_file

    decoded = decode(
        read_file(source.path, sha256=source.sha256), target_size=None, max_pixels=source.max_pixels
    )
    width, height = decoded.upright_size
    shown = display_pixels(decoded.pixels, VIEW_MAX_SIDE)
    headers = {"X-Original-Size": f"{width}x{height}"}
    if decoded.format == "DICOM":
        headers["X-Windows"] = json.dumps(dicom_presets(source.path))
    return encode_grey16(shown), headers


def _listed(value: object) -> list[Any]:
    """A DICOM value that may hold one item or several, as a list."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return [value]


def dicom_presets(path: str) -> list[dict[str, Any]]:
    """The file's own Window Center/Width pairs as presets in the viewer's terms (% of the
    decoded range). The decoder has applied the first window already (PS3.4 N.2), so that one
    is the full range and the others are placed relative to it; a window wider than the first
    can show no more than the first kept, and a file windowed by a VOI LUT or a SIGMOID window
    offers none."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if ds.get("VOILUTSequence") or str(ds.get("VOILUTFunction", "LINEAR")) == "SIGMOID":
            return []
        centres, widths = ds.get("WindowCenter"), ds.get("WindowWidth")
        if centres is None or widths is None:
            return []
        centres, widths = [float(v) for v in _listed(centres)], [float(v) for v in _listed(widths)]
        names = [str(n) for n in _listed(ds.get("WindowCenterWidthExplanation") or [])]
    except (OSError, ValueError, TypeError, AttributeError, pydicom.errors.InvalidDicomError):
        return []
    pairs = [(c, wd) for c, wd in zip(centres, widths, strict=False) if wd > 0]
    if not pairs:
        return []
    first_centre, first_width = pairs[0]
    presets = []
    for index, (centre, width) in enumerate(pairs):
        name = names[index] if index < len(names) and names[index] else f"window {index + 1}"
        presets.append(
            {
                "name": f"DICOM {name} (C {centre:g} / W {width:g})",
                "level": 50.0 + (centre - first_centre) / first_width * 100.0,
                "width": min(width / first_width * 100.0, 100.0),
            }
        )
    return presets


def routes(links: Links = LINKS) -> list[Route]:
    """GET /viewer/pixels/<token>: the pixels behind a live link, to the cookie it was issued to
    (the gate in front has already refused a browser that is not signed in)."""

    async def pixels(request: Request) -> Response:
        source = links.resolve(request.path_params["token"], request.cookies.get(access.COOKIE))
        if source is None:
            return PlainTextResponse("No such image link (expired or not yours).", 404)
        try:
            body, headers = await run_in_threadpool(rendered, source)
        except (OSError, ValueError) as exc:  # DecodeError is a ValueError
            return PlainTextResponse(f"The image cannot be shown: {exc}", 422)
        # Private: never kept by a shared cache; the link itself dies with the sign-in.
        headers = {**headers, "Cache-Control": "private, max-age=3600"}
        return Response(body, media_type="image/png", headers=headers)

    return [Route(PIXELS_PATH + "{token}", pixels, methods=["GET"])]


# -- the page's part ----------------------------------------------------------------------------


def page(spec: dict[str, Any]) -> str:
    """The viewer's self-contained HTML (script and style inline) for one image."""
    script = _SCRIPT.read_text(encoding="utf-8")
    data = json.dumps(spec).replace("</", "<\\/")
    return _HTML.format(
        spec=data, script=script, title=html.escape(str(spec.get("title", "Radiograph")))
    )


_HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
html, body {{margin: 0; padding: 0; font: 13px system-ui, sans-serif; color: #e9ecef;
  background: #111; overflow: hidden;}}
#fx {{display: flex; flex-direction: column; height: 100vh;}}
#stage {{position: relative; flex: 1; min-height: 0; background: #000; touch-action: none;
  cursor: grab;}}
#stage canvas {{position: absolute; inset: 0; width: 100%; height: 100%;}}
#msg {{position: absolute; inset: 0; display: flex; align-items: center; justify-content: center;
  color: #adb5bd; padding: 1rem; text-align: center;}}
#info {{position: absolute; left: .4rem; bottom: .3rem; font-variant-numeric: tabular-nums;
  background: rgba(0,0,0,.55); padding: .1rem .35rem; border-radius: .2rem; pointer-events: none;}}
.bar {{display: flex; flex-wrap: wrap; gap: .25rem .6rem; align-items: center;
  padding: .3rem .4rem; background: #1c1f24;}}
.bar label {{display: inline-flex; gap: .25rem; align-items: center; white-space: nowrap;}}
.bar input[type=range] {{width: 6.5rem;}}
.bar button, .bar select {{font: inherit; color: #e9ecef; background: #343a40;
  border: 1px solid #495057; border-radius: .25rem; padding: .1rem .45rem; cursor: pointer;}}
.bar output {{min-width: 2.6rem; font-variant-numeric: tabular-nums; display: inline-block;}}
</style></head><body><div id="fx">
<div id="stage"><canvas id="view" aria-label="radiograph"></canvas>
<div id="msg">Loading the image…</div><div id="info"></div></div>
<div class="bar">
 <button id="fit" title="Fit the whole image">Fit</button>
 <button id="one" title="One image pixel per screen pixel">1:1</button>
 <button id="out" title="Zoom out" aria-label="Zoom out">−</button>
 <button id="in" title="Zoom in" aria-label="Zoom in">+</button>
 <span>Zoom <output id="zoom">—</output></span>
 <label>Window preset <select id="preset"></select></label>
 <label><input type="checkbox" id="invert"> Invert</label>
</div>
<div class="bar">
 <label>Level <input type="range" id="level" min="0" max="100" step="0.5" value="50">
  <output id="levelv">50</output></label>
 <label>Window <input type="range" id="width" min="1" max="100" step="0.5" value="100">
  <output id="widthv">100</output></label>
 <label id="heatc"><input type="checkbox" id="heat"> Heat map
  <input type="range" id="heatop" min="0" max="100" value="45" aria-label="Heat map opacity">
 </label>
 <label id="boxc"><input type="checkbox" id="boxes" checked> Fracture boxes
  <input type="range" id="boxop" min="0" max="100" value="100"
   aria-label="Fracture box opacity"></label>
</div></div>
<script id="spec" type="application/json">{spec}</script>
<script>{script}</script>
</body></html>
"""
