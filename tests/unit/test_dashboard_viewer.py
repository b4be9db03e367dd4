"""The image viewer's server side (dashboard/viewer.py): the vendored OpenSeadragon is the build
package-lock.json pins, radiographs are cut into Deep Zoom levels and tiles at full resolution
with 16 bits of grey, heat maps are coloured at the size asked for, and a DICOM file's windows
become presets. The browser side is tested in tests/e2e/test_dashboard_viewer.py."""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from dashboard import viewer
from tests.make_inputs import dicom_bytes

SOURCE_DIR = Path(viewer.__file__).with_name("viewer_src")


def test_vendored_openseadragon_is_the_build_package_lock_pins() -> None:
    lock = json.loads((SOURCE_DIR / "package-lock.json").read_text())
    locked = lock["packages"]["node_modules/openseadragon"]
    wanted = json.loads((SOURCE_DIR / "package.json").read_text())["dependencies"]
    assert wanted == {"openseadragon": locked["version"]}  # pinned exactly, nothing else
    manifest = json.loads((viewer.STATIC_DIR / "openseadragon.json").read_text())
    assert (manifest["version"], manifest["integrity"]) == (locked["version"], locked["integrity"])
    script = (viewer.STATIC_DIR / "openseadragon.min.js").read_bytes()
    assert hashlib.sha256(script).hexdigest() == manifest["sha256"]
    assert script.startswith(f"//! openseadragon {locked['version']}\n".encode())
    licence = (viewer.STATIC_DIR / "openseadragon-LICENSE.txt").read_text()
    assert manifest["license"] == "BSD-3-Clause" and "OpenSeadragon contributors" in licence


def test_the_viewer_page_loads_only_files_that_are_served() -> None:
    page = viewer.page({"title": "Image #1", "image": "/viewer/pixels/x", "heat": None})
    loaded = set(re.findall(r'(?:src|href)="/viewer/static/([^"?]+)\?v=[0-9a-f]{12}"', page))
    assert loaded == set(viewer.STATIC_FILES)
    assert all((viewer.STATIC_DIR / name).is_file() for name in viewer.STATIC_FILES)


def test_grey_travels_in_16_bits() -> None:
    grey = np.arange(0, 65536, 7, dtype=np.uint16)[: 96 * 96].reshape(96, 96)
    assert np.array_equal(viewer.decode_grey16(viewer.encode_grey16(grey)), grey)
    assert viewer.grey16(np.array([[0.0, 0.5, 1.0, 2.0]]))[0].tolist() == [0, 32768, 65535, 65535]


@pytest.mark.parametrize(("width", "height"), [(1, 1), (373, 454), (1300, 1000), (1025, 513)])
def test_deep_zoom_levels_halve_rounding_up_down_to_one_pixel(width: int, height: int) -> None:
    full = np.random.default_rng(width).integers(0, 65536, (height, width), dtype=np.uint16)
    pyramid = viewer.Pyramid(full, original=(width, height), windows=[])
    assert pyramid.max_level == math.ceil(math.log2(max(width, height)))
    for level in range(pyramid.max_level, -1, -1):
        scale = 2 ** (pyramid.max_level - level)
        assert pyramid.level(level).shape == (math.ceil(height / scale), math.ceil(width / scale))
    assert pyramid.level(0).shape == (1, 1)
    assert pyramid.level(pyramid.max_level) is full
    # Area averaging keeps the mean grey at every level.
    assert (
        abs(float(pyramid.level(max(pyramid.max_level - 1, 0)).mean()) - float(full.mean()))
        < 0.02 * 65535
    )
    with pytest.raises(KeyError):
        pyramid.level(pyramid.max_level + 1)


def test_tiles_cover_the_level_with_one_pixel_of_overlap() -> None:
    full = np.random.default_rng(0).integers(0, 65536, (1100, 1300), dtype=np.uint16)
    pyramid = viewer.Pyramid(full, original=(1300, 1100), windows=[])
    size, top = viewer.TILE_SIZE, pyramid.max_level
    assert np.array_equal(pyramid.tile(top, 0, 0), full[: size + 1, : size + 1])
    assert np.array_equal(
        pyramid.tile(top, 1, 1), full[size - 1 : 2 * size + 1, size - 1 : 2 * size + 1]
    )
    assert np.array_equal(pyramid.tile(top, 2, 2), full[2 * size - 1 :, 2 * size - 1 :])
    for outside in [(top, 3, 0), (top, 0, 3), (top - 1, 2, 0), (top + 1, 0, 0)]:
        with pytest.raises(KeyError):
            pyramid.tile(*outside)
    assert pyramid.tile(0, 0, 0).shape == (1, 1)


def test_a_4600_by_5760_radiograph_is_served_at_full_resolution(tmp_path: Path) -> None:
    # A ramp from left to right, with every low byte random: 16 bits that all matter.
    ramp = np.linspace(0, 65280, 4600).astype(np.uint16) & 0xFF00
    noise = np.random.default_rng(5760).integers(0, 256, (5760, 4600), dtype=np.uint16)
    grey = ramp[None, :] | noise
    path = tmp_path / "large.png"
    assert cv2.imwrite(str(path), grey)  # a 16-bit PNG
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    source = viewer.Source(kind="image", path=str(path), sha256=sha, max_pixels=80_000_000)
    pyramid = viewer.Pyramids().get(source)
    info = pyramid.info()
    assert (info["width"], info["height"], info["original"]) == (4600, 5760, [4600, 5760])
    top = pyramid.max_level
    assert top == 13
    last = pyramid.tile(top, 4600 // viewer.TILE_SIZE, 5760 // viewer.TILE_SIZE)
    assert np.array_equal(last, grey[5760 - 5760 % 512 - 1 :, 4600 - 4600 % 512 - 1 :])
    # Every stored value arrives in the browser's tile as it was in the file.
    tile = viewer.decode_grey16(viewer.encode_grey16(pyramid.tile(top, 3, 7)))
    assert np.array_equal(tile, grey[7 * 512 - 1 : 8 * 512 + 1, 3 * 512 - 1 : 4 * 512 + 1])
    # The automatic window spans the 1st to 99th percentile of the ramp.
    assert info["auto"]["width"] == pytest.approx(98.0 * 65280 / 65535, abs=0.5)
    assert info["auto"]["level"] == pytest.approx(50.0 * 65280 / 65535, abs=0.5)


def test_pyramids_decode_each_source_once_and_keep_the_last_few() -> None:
    loaded: list[str] = []

    def load(source: viewer.Source) -> viewer.Pyramid:
        loaded.append(source.path)
        return viewer.Pyramid(np.zeros((4, 4), np.uint16), original=(4, 4), windows=[])

    pyramids = viewer.Pyramids(load=load, kept=2)
    a, b, c = (viewer.Source(kind="image", path=p) for p in "abc")
    first = pyramids.get(a)
    assert pyramids.get(a) is first
    pyramids.get(b)
    pyramids.get(c)  # a is the least recently used: dropped
    pyramids.get(b)
    pyramids.get(a)
    assert loaded == ["a", "b", "c", "a"]


def test_a_slow_decode_holds_up_requests_for_that_image_only() -> None:
    started, release = threading.Event(), threading.Event()
    loaded: list[str] = []

    def load(source: viewer.Source) -> viewer.Pyramid:
        loaded.append(source.path)
        if source.path == "slow":
            started.set()
            release.wait()
        return viewer.Pyramid(np.zeros((4, 4), np.uint16), original=(4, 4), windows=[])

    pyramids = viewer.Pyramids(load=load)
    slow, quick = viewer.Source(kind="image", path="slow"), viewer.Source(kind="image", path="b")
    got: list[viewer.Pyramid] = []
    waiting = [threading.Thread(target=lambda: got.append(pyramids.get(slow))) for _ in range(3)]
    for thread in waiting:
        thread.start()
    assert started.wait(30)
    other = threading.Thread(target=pyramids.get, args=(quick,))
    other.start()
    other.join(30)
    assert not other.is_alive()  # served while the slow image was still decoding
    release.set()
    for thread in waiting:
        thread.join(30)
    assert len(got) == 3 and got[0] is got[1] is got[2]
    assert loaded.count("slow") == 1 and loaded.count("b") == 1


def rgba_of(png: bytes) -> np.ndarray:
    rgba = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert rgba is not None
    return rgba


def test_heat_maps_are_coloured_at_the_size_asked_for() -> None:
    grid = np.zeros((14, 14), np.float32)
    grid[3:8, 2:7] = 1.0
    source = viewer.Source(kind="heat", path="", grid=tuple(tuple(map(float, r)) for r in grid))
    png = viewer.heat_png(source, (373, 454))
    rgba = rgba_of(png)
    assert rgba.shape == (454, 373, 4)
    assert rgba[0, 0, 3] == 0  # cold: transparent
    assert rgba[int(5.5 / 14 * 454), int(4.5 / 14 * 373)].tolist() == [0, 0, 128, 255]  # jet's top
    own = rgba_of(viewer.heat_png(source, None))
    assert own.shape == (14, 14, 4)


def test_dicom_windows_become_presets_relative_to_the_one_applied(tmp_path: Path) -> None:
    grey = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    path = tmp_path / "two.dcm"
    path.write_bytes(
        dicom_bytes(
            grey,
            bits=16,
            VOILUTFunction=None,
            WindowCenter=[32768.0, 20000.0],
            WindowWidth=[65536.0, 16384.0],
            WindowCenterWidthExplanation=["FULL", "BONE"],
        )
    )
    full, bone = viewer.dicom_presets(str(path))
    assert full == {"name": "DICOM FULL (C 32768 / W 65536)", "level": 50.0, "width": 100.0}
    assert bone["name"] == "DICOM BONE (C 20000 / W 16384)"
    assert bone["level"] == pytest.approx(50.0 + (20000 - 32768) / 65536 * 100)
    assert bone["width"] == pytest.approx(25.0)
    lut = tmp_path / "sigmoid.dcm"
    lut.write_bytes(dicom_bytes(grey, bits=16, VOILUTFunction="SIGMOID"))
    assert viewer.dicom_presets(str(lut)) == []
