// The record view's radiograph viewer, on OpenSeadragon (vendored beside this file; see
// dashboard/viewer.py). The radiograph comes as Deep Zoom tiles whose red and green bytes carry
// 16-bit grey; OpenSeadragon keeps each tile as it arrived and passes it through windowTile(),
// which maps it through a 65,536-entry window/level table. A window change re-runs that step on
// the tiles the browser already holds (requestInvalidate): no request to the server. The heat
// map is a second tiled image with its own opacity; the fracture boxes are overlays placed in
// image coordinates. Shift-drag changes level (up/down) and window (left/right).
"use strict";
(function () {
  const spec = JSON.parse(document.getElementById("spec").textContent);
  const $ = (id) => document.getElementById(id);
  const view = $("view"), msg = $("msg"), info = $("info");
  const state = {level: 50, width: 100, invert: false, heat: false, heatOpacity: 0.45,
    boxes: true, boxOpacity: 1};
  const presets = [{name: "Full range", level: 50, width: 100}];
  const boxes = [];
  let table = windowTable(), osd = null, radiograph = null, heatItem = null, meta = null;
  let windowing = false, again = false, animating = false, heatPending = false, drag = null;
  let windowedTiles = 0;

  // 16-bit grey -> an opaque grey RGBA pixel, as one little-endian 32-bit word.
  function windowTable() {
    const out = new Uint32Array(65536);
    const low = (state.level - state.width / 2) / 100, span = Math.max(state.width, 0.1) / 100;
    for (let v = 0; v < 65536; v++) {
      let g = ((v / 65535) - low) / span;
      g = g < 0 ? 0 : g > 1 ? 1 : g;
      out[v] = (0xff000000 | (Math.round((state.invert ? 1 - g : g) * 255) * 0x010101)) >>> 0;
    }
    return out;
  }

  // OpenSeadragon's tile pipeline: called for each radiograph tile when it arrives and again,
  // from its original data, after every requestInvalidate().
  async function windowTile(event) {
    if (!(event.tiledImage.source instanceof OpenSeadragon.DziTileSource)) return;  // the heat map
    const ctx = await event.getData("context2d");
    if (!ctx || event.outdated()) return;
    const image = ctx.getImageData(0, 0, ctx.canvas.width, ctx.canvas.height);
    const px = new Uint32Array(image.data.buffer), t = table;
    for (let i = 0; i < px.length; i++) {
      const v = px[i];  // bytes R, G, B, A: R the high byte of the grey, G the low
      px[i] = t[((v & 0xff) << 8) | ((v >>> 8) & 0xff)];
    }
    ctx.putImageData(image, 0, 0);
    view.dataset.windowed = ++windowedTiles;  // a running count, for the benchmark
    await event.setData(ctx, "context2d");
  }

  function rewindow() {
    table = windowTable();
    $("levelv").textContent = state.level.toFixed(1);
    $("widthv").textContent = state.width.toFixed(1);
    info.textContent = `L ${state.level.toFixed(1)} W ${state.width.toFixed(1)}` +
      (state.invert ? " inv" : "");
    if (!radiograph) return;
    if (windowing) { again = true; return; }  // one pass at a time, however fast the slider
    windowing = true;
    osd.requestInvalidate().then(() => {
      windowing = false;
      osd.forceRedraw();
      if (again) { again = false; rewindow(); }
    });
  }

  function setWindow(level, width) {
    state.level = Math.min(Math.max(level, 0), 100);
    state.width = Math.min(Math.max(width, 1), 100);
    $("level").value = state.level;
    $("width").value = state.width;
    rewindow();
  }

  function showZoom() {
    if (!radiograph) return;
    // Screen pixels per pixel of the original: 100% is the original at 1:1.
    const shown = radiograph.viewportToImageZoom(osd.viewport.getZoom(true)) *
      (meta.width / meta.original[0]);
    $("zoom").textContent = Math.round(shown * 100) + "%";
    view.dataset.scale = shown.toFixed(4);
  }

  function showOverlays() {
    if (heatItem) heatItem.setOpacity(state.heat ? state.heatOpacity : 0);
    for (const box of boxes) {
      // OpenSeadragon sets an overlay's display itself: hide it by its visibility.
      box.style.visibility = state.boxes && state.boxOpacity > 0 ? "visible" : "hidden";
      box.style.opacity = state.boxOpacity;
    }
  }

  function addBoxes() {
    const kx = meta.width / meta.original[0], ky = meta.height / meta.original[1];
    for (const [bx, by, bw, bh, score] of spec.boxes) {
      const element = document.createElement("div");
      element.className = "fx-box";
      const label = document.createElement("span");
      label.textContent = score.toFixed(2);
      element.append(label);
      const rect = radiograph.imageToViewportRectangle(bx * kx, by * ky, bw * kx, bh * ky);
      osd.addOverlay({element, location: rect});
      boxes.push(element);
    }
  }

  function addHeat() {
    const scale = Math.min(1, 1024 / Math.max(meta.width, meta.height));
    const url = `${spec.heat}?width=${Math.max(1, Math.round(meta.width * scale))}` +
      `&height=${Math.max(1, Math.round(meta.height * scale))}`;
    heatPending = true;
    osd.addTiledImage({
      tileSource: {type: "image", url, buildPyramid: false},
      x: 0, y: 0, width: 1, opacity: 0,
      success: (event) => {
        heatItem = event.item;
        heatPending = false;
        $("heat").checked = state.heat = Boolean(spec.heatOn);
        showOverlays();
      },
      error: () => { heatPending = false; $("heatc").hidden = true; },
    });
  }

  async function start() {
    const response = await fetch(spec.image + "/info", {credentials: "same-origin"});
    if (!response.ok) throw new Error(await response.text());
    meta = await response.json();
    presets.push({name: "Auto (1st–99th percentile)", ...meta.auto});
    for (const preset of meta.windows) presets.push(preset);  // the DICOM file's own windows
    $("preset").replaceChildren(...presets.map((p, i) => new Option(p.name, i)));
    osd = OpenSeadragon({
      element: view,
      drawer: "canvas",  // per-tile pixel access; needs no GPU
      showNavigationControl: false,
      maxZoomPixelRatio: 8,  // up to 8 screen pixels per image pixel
      minZoomImageRatio: 0.5,
      visibilityRatio: 0.5,
      zoomPerScroll: 1.25,
      preserveImageSizeOnResize: true,
      gestureSettingsMouse: {clickToZoom: false, dblClickToZoom: true},
      tileSources: {Image: {
        xmlns: "http://schemas.microsoft.com/deepzoom/2008",
        Url: spec.image + "/", Format: "png",
        Overlap: String(meta.overlap), TileSize: String(meta.tileSize),
        Size: {Width: String(meta.width), Height: String(meta.height)},
      }},
    });
    osd.addHandler("tile-invalidated", windowTile);
    osd.addHandler("open-failed", (e) => { msg.textContent = "The image cannot be shown."; });
    osd.addHandler("animation-start", () => { animating = true; });
    osd.addHandler("animation-finish", () => { animating = false; showZoom(); });
    osd.addHandler("animation", showZoom);
    osd.addHandler("resize", showZoom);
    osd.addHandler("canvas-press", (e) => {
      drag = e.originalEvent.shiftKey ? {level: state.level, width: state.width,
        x: e.position.x, y: e.position.y} : null;
    });
    osd.addHandler("canvas-drag", (e) => {
      if (!drag) return;
      e.preventDefaultAction = true;
      setWindow(drag.level - (e.position.y - drag.y) * 0.2,
        drag.width + (e.position.x - drag.x) * 0.2);
    });
    osd.addHandler("canvas-drag-end", (e) => { if (drag) e.preventDefaultAction = true; });
    osd.addHandler("canvas-release", () => { drag = null; });
    osd.addOnceHandler("open", () => {
      radiograph = osd.world.getItemAt(0);
      radiograph.addHandler("fully-loaded-change", (e) => { if (e.fullyLoaded) msg.remove(); });
      addBoxes();
      if (spec.heat) addHeat();
      showOverlays();
      showZoom();
      rewindow();
    });
  }

  // For tests and screenshots: resolves once tiles, windowing and animation are all at rest.
  window.fxSettled = () => new Promise((resolve) => {
    let calm = 0;
    const tick = () => {
      const busy = !radiograph || windowing || again || animating || heatPending ||
        !radiograph.getFullyLoaded() || (heatItem && !heatItem.getFullyLoaded());
      calm = busy ? 0 : calm + 1;
      if (calm >= 3) resolve(true); else requestAnimationFrame(tick);
    };
    tick();
  });

  if (!spec.heat) $("heatc").hidden = true;
  if (!spec.boxes.length) $("boxc").hidden = true;
  $("fit").onclick = () => osd && osd.viewport.goHome();
  $("one").onclick = () => radiograph && osd.viewport.zoomTo(
    radiograph.imageToViewportZoom(meta.width / meta.original[0]));
  $("in").onclick = () => osd && osd.viewport.zoomBy(1.5).applyConstraints();
  $("out").onclick = () => osd && osd.viewport.zoomBy(1 / 1.5).applyConstraints();
  $("level").oninput = (e) => { state.level = Number(e.target.value); rewindow(); };
  $("width").oninput = (e) => { state.width = Number(e.target.value); rewindow(); };
  $("invert").onchange = (e) => { state.invert = e.target.checked; rewindow(); };
  $("preset").onchange = (e) => {
    const p = presets[Number(e.target.value)];
    setWindow(p.level, p.width);
  };
  $("heat").onchange = (e) => { state.heat = e.target.checked; showOverlays(); };
  $("heatop").oninput = (e) => { state.heatOpacity = Number(e.target.value) / 100; showOverlays(); };
  $("boxes").onchange = (e) => { state.boxes = e.target.checked; showOverlays(); };
  $("boxop").oninput = (e) => { state.boxOpacity = Number(e.target.value) / 100; showOverlays(); };
  start().catch((error) => { msg.textContent = "The image cannot be shown: " + error.message; });
})();
