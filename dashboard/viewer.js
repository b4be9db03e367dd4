// The record view's radiograph viewer (dashboard/viewer.py embeds it; no library, no CDN).
// Pixels: a PNG whose red and green bytes carry 16-bit grey. Window/level maps them through a
// 65,536-entry table in the browser, with no request to the server; zoom and pan redraw the
// windowed image; the heat map and the fracture boxes are drawn over it, each with a toggle and
// an opacity. Shift-drag (or a right-button drag) changes level (up/down) and window (left/right).
"use strict";
(function () {
  const spec = JSON.parse(document.getElementById("spec").textContent);
  const $ = (id) => document.getElementById(id);
  const stage = $("stage"), view = $("view"), ctx = view.getContext("2d");
  const msg = $("msg"), info = $("info");
  const state = {level: 50, width: 100, invert: false, heat: false, heatOpacity: 0.45,
    boxes: true, boxOpacity: 1, scale: 1, x: 0, y: 0, fitted: true};
  let grey = null, w = 0, h = 0, windowed = null, heat = null, original = null;
  const presets = [{name: "Full range", level: 50, width: 100}];

  function windowTable() {
    const table = new Uint8ClampedArray(65536);
    const low = (state.level - state.width / 2) / 100, span = Math.max(state.width, 0.1) / 100;
    for (let v = 0; v < 65536; v++) {
      let g = ((v / 65535) - low) / span;
      g = g < 0 ? 0 : g > 1 ? 1 : g;
      table[v] = Math.round((state.invert ? 1 - g : g) * 255);
    }
    return table;
  }

  function applyWindow() {
    if (!grey) return;
    const table = windowTable();
    const image = windowed.ctx.createImageData(w, h);
    const out = new Uint32Array(image.data.buffer);
    for (let i = 0; i < grey.length; i++) {
      const g = table[grey[i]];
      out[i] = 0xff000000 | (g << 16) | (g << 8) | g;
    }
    windowed.ctx.putImageData(image, 0, 0);
    $("levelv").textContent = state.level.toFixed(1);
    $("widthv").textContent = state.width.toFixed(1);
    draw();
  }

  function fit() {
    const r = stage.getBoundingClientRect();
    state.scale = Math.min(r.width / w, r.height / h);
    state.x = (r.width - w * state.scale) / 2;
    state.y = (r.height - h * state.scale) / 2;
    state.fitted = true;
  }

  function zoomAt(factor, cx, cy) {
    const next = Math.min(Math.max(state.scale * factor, 0.02), 32);
    state.x = cx - (cx - state.x) * (next / state.scale);
    state.y = cy - (cy - state.y) * (next / state.scale);
    state.scale = next;
    state.fitted = false;
    draw();
  }

  function draw() {
    const r = stage.getBoundingClientRect(), ratio = window.devicePixelRatio || 1;
    if (view.width !== Math.round(r.width * ratio) || view.height !== Math.round(r.height * ratio)) {
      view.width = Math.round(r.width * ratio);
      view.height = Math.round(r.height * ratio);
    }
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, r.width, r.height);
    if (!grey) return;
    ctx.imageSmoothingEnabled = state.scale < 1;  // magnified: show the pixels as they are
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(windowed.canvas, state.x, state.y, w * state.scale, h * state.scale);
    if (heat && state.heat && state.heatOpacity > 0) {
      ctx.globalAlpha = state.heatOpacity;
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(heat, state.x, state.y, w * state.scale, h * state.scale);
      ctx.globalAlpha = 1;
    }
    if (state.boxes && state.boxOpacity > 0 && spec.boxes.length && original) {
      drawBoxes();
    }
    // The share of the original's pixels per screen pixel: 100% is the original at 1:1.
    const shown = state.scale * (w / (original ? original[0] : w));
    $("zoom").textContent = Math.round(shown * 100) + "%";
    view.dataset.scale = shown.toFixed(4);
    info.textContent = `L ${state.level.toFixed(1)} W ${state.width.toFixed(1)}` +
      (state.invert ? " inv" : "");
  }

  function drawBoxes() {
    const k = state.scale * (w / original[0]), ky = state.scale * (h / original[1]);
    ctx.globalAlpha = state.boxOpacity;
    ctx.font = "bold 13px system-ui, sans-serif";
    for (const [bx, by, bw, bh, score] of spec.boxes) {
      const x = state.x + bx * k, y = state.y + by * ky, width = bw * k, height = bh * ky;
      ctx.lineWidth = 4; ctx.strokeStyle = "#000"; ctx.strokeRect(x, y, width, height);
      ctx.lineWidth = 2; ctx.strokeStyle = "#ff00aa"; ctx.strokeRect(x, y, width, height);
      const text = score.toFixed(2), tw = ctx.measureText(text).width + 6;
      const ty = y - 17 >= 0 ? y - 17 : y;
      ctx.fillStyle = "#ff00aa"; ctx.fillRect(x, ty, tw, 17);
      ctx.fillStyle = "#000"; ctx.fillText(text, x + 3, ty + 13);
    }
    ctx.globalAlpha = 1;
  }

  function setWindow(level, width) {
    state.level = Math.min(Math.max(level, 0), 100);
    state.width = Math.min(Math.max(width, 1), 100);
    $("level").value = state.level;
    $("width").value = state.width;
    applyWindow();
  }

  function percentiles(low, high) {
    const counts = new Uint32Array(65536);
    for (let i = 0; i < grey.length; i++) counts[grey[i]]++;
    const find = (q) => {
      let seen = 0;
      const target = q * grey.length;
      for (let v = 0; v < 65536; v++) { seen += counts[v]; if (seen >= target) return v / 65535; }
      return 1;
    };
    return [find(low), find(high)];
  }

  async function loadImage(url) {
    const response = await fetch(url, {credentials: "same-origin", cache: "default"});
    if (!response.ok) throw new Error(await response.text());
    const size = response.headers.get("X-Original-Size");
    const bitmap = await createImageBitmap(await response.blob(),
      {colorSpaceConversion: "none", premultiplyAlpha: "none"});
    const windows = response.headers.get("X-Windows");
    return [bitmap, size ? size.split("x").map(Number) : null, windows ? JSON.parse(windows) : []];
  }

  async function start() {
    const [bitmap, size, fileWindows] = await loadImage(spec.image);
    w = bitmap.width; h = bitmap.height; original = size || [w, h];
    const scratch = new OffscreenCanvas(w, h), sctx = scratch.getContext("2d");
    sctx.drawImage(bitmap, 0, 0);
    const rgba = sctx.getImageData(0, 0, w, h).data;
    grey = new Uint16Array(w * h);
    for (let i = 0, j = 0; i < grey.length; i++, j += 4) grey[i] = (rgba[j] << 8) | rgba[j + 1];
    const canvas = new OffscreenCanvas(w, h);
    windowed = {canvas, ctx: canvas.getContext("2d")};
    const [p1, p99] = percentiles(0.01, 0.99);
    presets.push({name: "Auto (1st–99th percentile)", level: (p1 + p99) * 50,
      width: Math.max((p99 - p1) * 100, 1)});
    for (const preset of fileWindows) presets.push(preset);  // the DICOM file's own windows
    $("preset").replaceChildren(...presets.map((p, i) => new Option(p.name, i)));
    msg.remove();
    fit();
    applyWindow();
    if (spec.heat) {
      try { heat = (await loadImage(spec.heat))[0]; } catch (e) { heat = null; }
      $("heat").checked = state.heat = Boolean(heat) && spec.heatOn;
      draw();
    }
  }

  if (!spec.heat) $("heatc").hidden = true;
  if (!spec.boxes.length) $("boxc").hidden = true;
  $("fit").onclick = () => { fit(); draw(); };
  $("one").onclick = () => {
    const r = stage.getBoundingClientRect();
    zoomAt((original ? original[0] / w : 1) / state.scale, r.width / 2, r.height / 2);
  };
  $("in").onclick = () => { const r = stage.getBoundingClientRect(); zoomAt(1.5, r.width / 2, r.height / 2); };
  $("out").onclick = () => { const r = stage.getBoundingClientRect(); zoomAt(1 / 1.5, r.width / 2, r.height / 2); };
  $("level").oninput = (e) => { state.level = Number(e.target.value); requestWindow(); };
  $("width").oninput = (e) => { state.width = Number(e.target.value); requestWindow(); };
  $("invert").onchange = (e) => { state.invert = e.target.checked; applyWindow(); };
  $("preset").onchange = (e) => { const p = presets[Number(e.target.value)]; setWindow(p.level, p.width); };
  $("heat").onchange = (e) => { state.heat = e.target.checked; draw(); };
  $("heatop").oninput = (e) => { state.heatOpacity = Number(e.target.value) / 100; draw(); };
  $("boxes").onchange = (e) => { state.boxes = e.target.checked; draw(); };
  $("boxop").oninput = (e) => { state.boxOpacity = Number(e.target.value) / 100; draw(); };

  let pending = false;
  function requestWindow() {  // one table and one pass per frame, however fast the slider moves
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; applyWindow(); });
  }

  stage.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = stage.getBoundingClientRect();
    zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top);
  }, {passive: false});
  stage.addEventListener("contextmenu", (e) => e.preventDefault());
  const pointers = new Map();
  let drag = null;
  stage.addEventListener("pointerdown", (e) => {
    stage.setPointerCapture(e.pointerId);
    pointers.set(e.pointerId, [e.clientX, e.clientY]);
    drag = {x: e.clientX, y: e.clientY, windowing: e.shiftKey || e.button === 2,
      level: state.level, width: state.width, spread: null};
    stage.style.cursor = "grabbing";
  });
  stage.addEventListener("pointermove", (e) => {
    if (!drag || !pointers.has(e.pointerId)) return;
    const last = pointers.get(e.pointerId);
    pointers.set(e.pointerId, [e.clientX, e.clientY]);
    if (pointers.size === 2) {  // pinch: zoom about the fingers' midpoint
      const [a, b] = [...pointers.values()], r = stage.getBoundingClientRect();
      const spread = Math.hypot(a[0] - b[0], a[1] - b[1]);
      if (drag.spread) zoomAt(spread / drag.spread, (a[0] + b[0]) / 2 - r.left, (a[1] + b[1]) / 2 - r.top);
      drag.spread = spread;
      return;
    }
    if (drag.windowing) {
      setWindow(drag.level - (e.clientY - drag.y) * 0.2, drag.width + (e.clientX - drag.x) * 0.2);
      return;
    }
    state.x += e.clientX - last[0];
    state.y += e.clientY - last[1];
    state.fitted = false;
    draw();
  });
  const release = (e) => {
    pointers.delete(e.pointerId);
    if (pointers.size === 0) { drag = null; stage.style.cursor = "grab"; }
  };
  stage.addEventListener("pointerup", release);
  stage.addEventListener("pointercancel", release);
  window.addEventListener("resize", () => { if (state.fitted && grey) fit(); draw(); });
  start().catch((error) => { msg.textContent = "The image cannot be shown: " + error.message; });
})();
