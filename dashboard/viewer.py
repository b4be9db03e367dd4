"""The record view's image viewer: OpenSeadragon (vendored in dashboard/static/viewer/, rebuilt by
`make viewer-assets` from dashboard/viewer_src/) showing the radiograph at full resolution as Deep
Zoom tiles, with window/level computed in the browser (the DICOM file's own windows as presets)
and the heat map and fracture boxes as overlays that toggle and fade. No Streamlit in here.

How the pixels travel: the page embeds a small viewer page in an iframe with a per-session link,
`/viewer/pixels/<token>`. A link is a random token registered in this process for one source
and, with a password set, one sign-in cookie: the gate (dashboard/access.py) refuses it without a
valid cookie, and this handler refuses it with any cookie but the one it was issued to, or after
Sign out. Under a radiograph's link the viewer reads `/info` (size, windows) and Deep Zoom tiles
`/<level>/<column>_<row>.png`: lossless PNGs whose red and green bytes carry 16 bits of grey,
reduced level by level here from the full-resolution pixels, so the browser windows the stored
dynamic range, not an 8-bit copy, with no server round trip per step. A heat map's link serves
the map coloured, at the size the viewer asks for.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
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
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dashboard import access
from dashboard.links import SessionLinks

PIXELS_PATH = "/viewer/pixels/"
STATIC_PATH = "/viewer/static/"
STATIC_DIR = Path(__file__).with_name("static") / "viewer"
# What the viewer page loads from STATIC_DIR; nothing else there is served.
STATIC_FILES = {
    "openseadragon.min.js": "text/javascript",
    "viewer.js": "text/javascript",
    "viewer.css": "text/css",
}
TILE_SIZE = 512  # Deep Zoom tiles: a fitted view of a radiograph takes a handful
TILE_OVERLAP = 1  # one shared pixel at each inner edge, so smoothing leaves no seams
HEAT_MAX_SIDE = 2048  # the largest heat map the viewer may ask for (it asks for 1,024)
MAX_LINKS = 4096
PYRAMIDS_KEPT = 2  # decoded radiographs kept in memory: 2 bytes a pixel and a third more


@dataclass(frozen=True)
class Source:
    """What a link serves: a radiograph (path + sha256), or a heat map (a stored grid's path or
    the grid itself, computed on request)."""

    kind: str  # "image" or "heat"
    path: str
    sha256: str = ""
    max_pixels: int = 0
    grid: tuple[tuple[float, ...], ...] | None = None  # a computed map, rows of [0, 1]


class Links(SessionLinks[Source]):
    """Per-session links to viewer pixels, shared by the page runs and the handler."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__(PIXELS_PATH, max_links=MAX_LINKS, clock=clock)


LINKS = Links()


# -- pixels -------------------------------------------------------------------------------------


def grey16(pixels: np.ndarray) -> np.ndarray:
    """Greyscale floats in [0, 1] as uint16 (the 16 bits every tile carries)."""
    return np.rint(np.clip(pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)


def encode_grey16(grey: np.ndarray) -> bytes:
    """uint16 grey as a lossless RGB PNG: red the high byte, green the low, blue zero."""
    import cv2

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


def encode_heat(grid: np.ndarray, size: tuple[int, int] | None = None) -> bytes:
    """A heat map ([0, 1]) as a jet-coloured RGBA PNG, resized (bilinear) to `size` = (width,
    height) when given; cold areas transparent, so the radiograph shows through where the model
    sees nothing."""
    import cv2

    values = np.clip(np.nan_to_num(grid.astype(np.float32)), 0.0, 1.0)
    if size is not None and size != (values.shape[1], values.shape[0]):
        values = np.clip(cv2.resize(values, size, interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    bgr = cv2.applyColorMap((values * 255.0).round().astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (np.clip(values * 2.0, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    ok, png = cv2.imencode(".png", np.dstack([bgr, alpha]))
    if not ok:
        raise ValueError("the heat map could not be encoded for display")
    return png.tobytes()


class Pyramid:
    """A radiograph's full-resolution pixels as 16-bit grey and the Deep Zoom levels below them
    (each half the one above, rounded up, area-averaged), built when first asked for."""

    def __init__(
        self, full: np.ndarray, *, original: tuple[int, int], windows: list[dict[str, Any]]
    ) -> None:
        self.height, self.width = full.shape
        self.original = original  # the stored image's upright (width, height): the boxes' frame
        self.windows = windows
        self.max_level = math.ceil(math.log2(max(self.width, self.height, 1)))
        self._levels = {self.max_level: full}
        self._lock = threading.Lock()

    def level(self, level: int) -> np.ndarray:
        """The pixels at a Deep Zoom level (max_level is the full resolution, 0 is 1 x 1)."""
        import cv2

        if not 0 <= level <= self.max_level:
            raise KeyError(level)
        with self._lock:
            below = min(n for n in self._levels if n >= level)
            pixels = self._levels[below]
            for n in range(below - 1, level - 1, -1):
                height, width = pixels.shape
                size = ((width + 1) // 2, (height + 1) // 2)
                pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
                self._levels[n] = pixels.reshape(size[1], size[0])
            return self._levels[level]

    def tile(self, level: int, column: int, row: int) -> np.ndarray:
        """One Deep Zoom tile: TILE_SIZE pixels square at most, plus TILE_OVERLAP on inner edges."""
        pixels = self.level(level)
        height, width = pixels.shape
        if not (0 <= column * TILE_SIZE < width and 0 <= row * TILE_SIZE < height):
            raise KeyError((level, column, row))
        x0, y0 = column * TILE_SIZE, row * TILE_SIZE
        x0, y0 = max(x0 - TILE_OVERLAP, 0), max(y0 - TILE_OVERLAP, 0)
        x1 = min((column + 1) * TILE_SIZE + TILE_OVERLAP, width)
        y1 = min((row + 1) * TILE_SIZE + TILE_OVERLAP, height)
        return pixels[y0:y1, x0:x1]

    def info(self) -> dict[str, Any]:
        """What the viewer needs before its first tile: sizes, windows and an automatic window
        (1st to 99th percentile, in % of the 16-bit range like the DICOM presets, taken at a
        quarter of the resolution: the same figures, a sixteenth of the work)."""
        sample = self.level(max(self.max_level - 2, 0))
        counts = np.cumsum(np.bincount(sample.ravel(), minlength=65536))
        low, high = (int(np.searchsorted(counts, q * counts[-1])) / 655.35 for q in (0.01, 0.99))
        return {
            "width": self.width,
            "height": self.height,
            "tileSize": TILE_SIZE,
            "overlap": TILE_OVERLAP,
            "original": list(self.original),
            "windows": self.windows,
            "auto": {"level": (low + high) / 2, "width": max(high - low, 1.0)},
        }


def load_pyramid(source: Source) -> Pyramid:
    """Decode a radiograph at full resolution (the settings' max_pixels still refuses a bomb)."""
    from model.decode import decode
    from model.files import read_file

    decoded = decode(
        read_file(source.path, sha256=source.sha256), target_size=None, max_pixels=source.max_pixels
    )
    windows = dicom_presets(source.path) if decoded.format == "DICOM" else []
    return Pyramid(grey16(decoded.pixels), original=decoded.upright_size, windows=windows)


@dataclass
class Pyramids:
    """The last few decoded radiographs. A burst of requests for a new image decodes it once
    (the others wait for that decode); requests for other images do not wait for it."""

    load: Callable[[Source], Pyramid] = load_pyramid
    kept: int = PYRAMIDS_KEPT
    _cache: OrderedDict[Source, Pyramid] = field(default_factory=OrderedDict)
    _loading: dict[Source, threading.Lock] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, source: Source) -> Pyramid:
        with self._lock:
            pyramid = self._cached(source)
            if pyramid is not None:
                return pyramid
            loading = self._loading.setdefault(source, threading.Lock())
        with loading:
            try:
                with self._lock:
                    pyramid = self._cached(source)
                if pyramid is None:
                    pyramid = self.load(source)  # a DecodeError caches nothing: asked again
                    with self._lock:
                        self._cache[source] = pyramid
                        while len(self._cache) > self.kept:
                            self._cache.popitem(last=False)
                return pyramid
            finally:
                with self._lock:
                    self._loading.pop(source, None)

    def _cached(self, source: Source) -> Pyramid | None:
        pyramid = self._cache.get(source)
        if pyramid is not None:
            self._cache.move_to_end(source)
        return pyramid


PYRAMIDS = Pyramids()


@lru_cache(maxsize=16)
def heat_png(source: Source, size: tuple[int, int] | None) -> bytes:
    """A heat map source's PNG at `size` (or its own size)."""
    if source.grid is not None:
        grid = np.asarray(source.grid, dtype=np.float32)
    else:
        from model.explain import load_map

        grid = load_map(Path(source.path))
    return encode_heat(grid, size)


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


def _heat_size(request: Request) -> tuple[int, int] | None:
    """The ?width=&height= a heat map is asked for, each 1..HEAT_MAX_SIDE; None without them."""
    width, height = request.query_params.get("width"), request.query_params.get("height")
    if width is None and height is None:
        return None
    if not (width and height and width.isdigit() and height.isdigit()):
        raise ValueError("width and height must both be whole numbers")
    size = (int(width), int(height))
    if not all(1 <= side <= HEAT_MAX_SIDE for side in size):
        raise ValueError(f"width and height must be between 1 and {HEAT_MAX_SIDE}")
    return size


def routes(links: Links = LINKS, pyramids: Pyramids = PYRAMIDS) -> list[Route]:
    """The viewer's files and the pixels behind live links, to the cookie each link was issued
    to (the gate in front has already refused a browser that is not signed in):

    - GET /viewer/static/<file>: the viewer's script and style and the vendored OpenSeadragon;
    - GET /viewer/pixels/<token>: a radiograph's full resolution in one PNG, or a heat map
      (?width=&height= resizes it);
    - GET /viewer/pixels/<token>/info: a radiograph's sizes and windows, as JSON;
    - GET /viewer/pixels/<token>/<level>/<column>_<row>.png: one of its Deep Zoom tiles.
    """

    def private(body: bytes, headers: dict[str, str] | None = None) -> Response:
        # Private: never kept by a shared cache; the link itself dies with the sign-in.
        headers = {**(headers or {}), "Cache-Control": "private, max-age=3600"}
        return Response(body, media_type="image/png", headers=headers)

    async def answer(request: Request, kind: str, work: Callable[[Source], Response]) -> Response:
        source = links.resolve(request.path_params["token"], request.cookies.get(access.COOKIE))
        if source is None or (kind != "any" and source.kind != kind):
            return PlainTextResponse("No such image link (expired or not yours).", 404)
        try:
            return await run_in_threadpool(work, source)
        except KeyError:
            return PlainTextResponse("No such tile.", 404)
        except (OSError, ValueError) as exc:  # DecodeError is a ValueError
            return PlainTextResponse(f"The image cannot be shown: {exc}", 422)

    async def whole(request: Request) -> Response:
        def work(source: Source) -> Response:
            if source.kind == "heat":
                return private(heat_png(source, _heat_size(request)))
            pyramid = pyramids.get(source)
            size = f"{pyramid.original[0]}x{pyramid.original[1]}"
            body = encode_grey16(pyramid.level(pyramid.max_level))
            return private(body, {"X-Original-Size": size})

        return await answer(request, "any", work)

    async def info(request: Request) -> Response:
        def work(source: Source) -> Response:
            body = pyramids.get(source).info()
            return JSONResponse(body, headers={"Cache-Control": "private, no-cache"})

        return await answer(request, "image", work)

    async def tile(request: Request) -> Response:
        level, column, row = (request.path_params[k] for k in ("level", "column", "row"))

        def work(source: Source) -> Response:
            return private(encode_grey16(pyramids.get(source).tile(level, column, row)))

        return await answer(request, "image", work)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return PlainTextResponse("Not found.", 404)
        body = await run_in_threadpool((STATIC_DIR / name).read_bytes)
        # The page names each file with its digest (?v=), so a new build is a new URL.
        headers = {"Cache-Control": "private, max-age=86400"}
        return Response(body, media_type=STATIC_FILES[name], headers=headers)

    tiles = PIXELS_PATH + "{token}/{level:int}/{column:int}_{row:int}.png"
    return [
        Route(STATIC_PATH + "{name}", static, methods=["GET"]),
        Route(PIXELS_PATH + "{token}", whole, methods=["GET"]),
        Route(PIXELS_PATH + "{token}/info", info, methods=["GET"]),
        Route(tiles, tile, methods=["GET"]),
    ]


# -- the page's part ----------------------------------------------------------------------------


@lru_cache(maxsize=len(STATIC_FILES))
def static_url(name: str) -> str:
    """A viewer file's URL, versioned by its content so a browser never runs a stale copy."""
    digest = hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]
    return f"{STATIC_PATH}{name}?v={digest}"


def page(spec: dict[str, Any]) -> str:
    """The viewer's HTML for one image: the spec inline, the scripts and style from
    /viewer/static (the page is small; the browser caches the 350 kB of OpenSeadragon)."""
    data = json.dumps(spec).replace("</", "<\\/")
    return _HTML.format(
        spec=data,
        title=html.escape(str(spec.get("title", "Radiograph"))),
        css=static_url("viewer.css"),
        osd=static_url("openseadragon.min.js"),
        script=static_url("viewer.js"),
    )


_HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="{css}"></head><body><div id="fx">
<div id="stage"><div id="view" role="img" aria-label="radiograph"></div>
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
<script src="{osd}"></script>
<script src="{script}"></script>
</body></html>
"""
