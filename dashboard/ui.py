"""Streamlit pieces the pages share: the process-wide context, the notice, the sign-in gate,
the verdict card, the image viewer (window/level), the heatmap, all fields, the review form, and
the DICOM panel (study, sender, results sent to PACS).
"""

from __future__ import annotations

import hashlib
import html
import os
import time
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import streamlit as st
from sqlalchemy.orm import Session, sessionmaker

from dashboard import services
from db import browse, exports
from db.models import (
    DicomExport,
    ExportState,
    Image,
    ImageSource,
    ImageStatus,
    Prediction,
    Verdict,
    utcnow,
)
from db.session import transaction

if TYPE_CHECKING:
    from model.inference import Classifier

LABEL_TEXT = {
    browse.POSITIVE_LABEL: "Fracture suspected",
    browse.NEGATIVE_LABEL: "No fracture suspected",
}
VERDICT_TEXT: dict[str, str] = {
    Verdict.FRACTURE: "Fracture suspected",
    Verdict.DOUBT: "Doubt — review",
    Verdict.NO_FRACTURE: "No fracture suspected",
}
VERDICT_CLASS: dict[str, str] = {
    Verdict.FRACTURE: "pos",
    Verdict.DOUBT: "doubt",
    Verdict.NO_FRACTURE: "neg",
}
STATUS_TEXT: dict[str, str] = {
    ImageStatus.QUEUED: "Queued",
    ImageStatus.PROCESSING: "Processing",
    ImageStatus.DONE: "Done",
    ImageStatus.FAILED: "Failed",
}
SOURCE_TEXT: dict[str, str] = {
    ImageSource.WATCH: "Inbox",
    ImageSource.UPLOAD: "Upload",
    ImageSource.DICOM: "DICOM network",
}
EXPORT_TEXT: dict[str, str] = {
    ExportState.SENT: "sent",
    ExportState.PENDING: "pending",
    ExportState.FAILED: "failed",
    browse.NOT_EXPORTED: "not sent",
}
BROWSE_PAGE = "views/browse.py"
# Browse's sidebar filters (widget keys); the model choice is reset to LATEST beside them.
BROWSE_FILTER_KEYS = (
    "f-verdicts",
    "f-prob",
    "f-dates",
    "f-sources",
    "f-statuses",
    "f-review",
    "f-name",
    "f-regions",
    "f-disagree",
    "f-study",
    "f-export",
)
LATEST = "latest"
STUDY_ROWS = 50  # instances of a study listed in the record view

_CSS = """
<style>
[data-testid="stMainBlockContainer"] {padding-top: 3.2rem;}
.fx-notice {border-left: 4px solid #f08c00; background: rgba(240,140,0,.10);
  padding: .35rem .8rem; border-radius: .3rem; font-size: .9rem; margin-bottom: .6rem;}
.fx-card {border: 1px solid rgba(128,128,128,.35); border-radius: .5rem; padding: .9rem 1rem;}
.fx-card.pos {border-left: 6px solid #e03131; background: rgba(224,49,49,.07);}
.fx-card.neg {border-left: 6px solid #1c7ed6; background: rgba(28,126,214,.06);}
.fx-card.doubt {border-left: 6px solid #e67700; background: rgba(230,119,0,.08);}
.fx-card.fail {border-left: 6px solid #868e96; background: rgba(134,142,150,.08);}
.fx-label {font-size: 1.45rem; font-weight: 700; letter-spacing: .01em; line-height: 1.2;}
.fx-card.pos .fx-label {color: #e03131;}
.fx-card.neg .fx-label {color: #1c7ed6;}
.fx-card.doubt .fx-label {color: #e67700;}
.fx-prob {font-size: 1.0rem; margin: .35rem 0 .2rem 0; font-variant-numeric: tabular-nums;}
.fx-bar {position: relative; height: 14px; border-radius: 7px; margin: .4rem 0 .15rem 0;}
.fx-fill {position: absolute; top: 0; left: 0; bottom: 0; border-radius: 7px;
  background: rgba(128,128,128,.55);}
.fx-card.pos .fx-fill {background: #e03131;}
.fx-card.neg .fx-fill {background: #1c7ed6;}
.fx-card.doubt .fx-fill {background: #e67700;}
.fx-thr {position: absolute; top: -4px; bottom: -4px; width: 3px; background: currentColor;
  border-radius: 1px;}
.fx-thr.doubt {width: 2px; opacity: .7;}
.fx-ops {font-size: .85rem; opacity: .9; font-variant-numeric: tabular-nums;}
.fx-scale {position: relative; height: 1.1rem; font-size: .75rem; opacity: .75;
  font-variant-numeric: tabular-nums;}
.fx-scale span {position: absolute; top: 0; white-space: nowrap;}
.fx-scale .t {transform: translateX(-50%);}
.fx-meta {font-size: .82rem; opacity: .85; margin-top: .5rem; line-height: 1.5;}
.fx-meta code {font-size: .78rem;}
[data-testid="stImage"] img {max-height: 64vh; width: auto; max-width: 100%;
  object-fit: contain; background: #000;}
.fx-gap {height: .5rem;}
.fx-review {font-size: .85rem; padding: .3rem 0 .4rem 0; margin-bottom: .4rem;
  border-bottom: 1px solid rgba(128,128,128,.2);}
</style>
"""


# -- context -------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def _dashboard(environment: str) -> services.Dashboard:
    from fracture.cli import build_settings

    del environment  # the cache key: a new FRACTURE_* environment builds a new context
    return services.Dashboard.start(build_settings())


def dashboard() -> services.Dashboard:
    """The process's settings, database and broker handles; stops the page on bad settings."""
    from fracture.cli import UserError

    environment = sorted((k, v) for k, v in os.environ.items() if k.startswith("FRACTURE_"))
    key = hashlib.sha256(repr(environment).encode()).hexdigest()
    try:
        return _dashboard(key)
    except UserError as exc:
        st.error(f"The dashboard cannot start: {exc}")
        st.stop()
        raise  # unreachable: st.stop() ends the run


@st.cache_resource(show_spinner="Loading the model for an on-demand heatmap…")
def classifier(model_path: str, max_pixels: int) -> Classifier:
    from model.inference import Classifier

    return Classifier.load(Path(model_path), device="cpu", max_pixels=max_pixels)


# -- page furniture ------------------------------------------------------------------------------


def style() -> None:
    st.markdown(_CSS, unsafe_allow_html=True)


def notice() -> None:
    st.markdown(
        f'<div class="fx-notice"><b>{html.escape(services.NOTICE)}</b> '
        "The model's output is a second look, never a diagnosis: every image is read by a "
        "clinician.</div>",
        unsafe_allow_html=True,
    )


def gate(dashboard: services.Dashboard) -> bool:
    """True when the reader may see the dashboard (no password set, or signed in this session)."""
    settings = dashboard.settings
    if not services.password_required(settings) or st.session_state.get("signed_in"):
        return True
    st.subheader("Sign in")
    with st.form("sign_in", clear_on_submit=True):
        attempt = st.text_input("Dashboard password", type="password", key="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        if services.password_ok(settings, attempt or ""):
            st.session_state["signed_in"] = True
            st.rerun()
        time.sleep(1.0)  # slows guessing
        st.error("Wrong password.")
    st.caption("This dashboard is protected by a shared password (FRACTURE_DASHBOARD_PASSWORD).")
    return False


def sign_out_button(dashboard: services.Dashboard) -> None:
    signed_in = st.session_state.get("signed_in", False)
    if not (services.password_required(dashboard.settings) and signed_in):
        return
    if st.sidebar.button("Sign out", icon=":material/logout:"):
        st.session_state["signed_in"] = False
        st.rerun()


# -- time ----------------------------------------------------------------------------------------


def browser_zone() -> tzinfo:
    name = st.context.timezone
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return UTC


def as_utc(moment: datetime) -> datetime:
    """Stored times are UTC; SQLite hands them back without a zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def local_time(moment: datetime | None, *, seconds: bool = False) -> str:
    if moment is None:
        return ""
    zone = browser_zone()
    text = as_utc(moment).astimezone(zone).strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else ""))
    return text if zone is not UTC else text + " UTC"


def day_bounds(days: tuple[date, ...]) -> tuple[datetime | None, datetime | None]:
    """A date-input range (browser time zone) as [from, before) in UTC."""
    zone = browser_zone()
    start = end = None
    if len(days) >= 1:
        start = datetime.combine(days[0], datetime.min.time(), zone).astimezone(UTC)
    if len(days) == 2:
        end = datetime.combine(days[1] + timedelta(days=1), datetime.min.time(), zone)
        end = end.astimezone(UTC)
    return start, end


# -- verdict -------------------------------------------------------------------------------------


def source_text(source: str) -> str:
    return SOURCE_TEXT.get(source, source)


def label_text(label: str | None) -> str:
    return LABEL_TEXT.get(label or "", label or "—")


def region_text(region: str | None) -> str:
    """A predicted body region for people; `none` is a model without a region head."""
    if region is None or region == browse.NO_REGION:
        return "no region (single-head model)"
    return region.capitalize()


def region_cell(region: str | None, disagrees: bool | None) -> str:
    if region is None:
        return ""
    return f"{region} ⚠ DICOM differs" if disagrees else region


def region_line(prediction: Prediction) -> str | None:
    """ "hand, 87%" for a two-head model's prediction; None otherwise."""
    if prediction.region is None:
        return None
    if prediction.region_probability is None:
        return prediction.region
    return f"{prediction.region}, {prediction.region_probability:.0%}"


def verdict_of(prediction: Prediction) -> str:
    """The prediction's three-way answer; a row without one answers as its label implies."""
    if prediction.verdict in VERDICT_TEXT:
        return str(prediction.verdict)
    return Verdict.FRACTURE if prediction.label == browse.POSITIVE_LABEL else Verdict.NO_FRACTURE


def verdict_text(verdict: str | None) -> str:
    return VERDICT_TEXT.get(verdict or "", verdict or "—")


def operating_points(prediction: Prediction) -> str:
    """The probability and both operating points in one line: "p = 0.412; fracture at ≥ 0.350,
    doubt at ≥ 0.120"."""
    text = f"p = {prediction.probability:.3f}; fracture at ≥ {prediction.threshold:.3f}"
    if prediction.doubt_threshold is None:
        return text + " (one operating point: no doubt band for this model)"
    return text + f", doubt at ≥ {prediction.doubt_threshold:.3f}"


def _bar(prediction: Prediction) -> str:
    """The probability bar: zones no fracture / doubt / fracture, the operating points marked."""
    probability = min(max(prediction.probability, 0.0), 1.0)
    threshold = min(max(prediction.threshold, 0.0), 1.0)
    doubt = prediction.doubt_threshold
    doubt = None if doubt is None else min(max(doubt, 0.0), threshold)
    low = threshold if doubt is None else doubt
    zones = (
        f"rgba(28,126,214,.22) 0 {low * 100:.1f}%, "
        f"rgba(230,119,0,.28) {low * 100:.1f}% {threshold * 100:.1f}%, "
        f"rgba(224,49,49,.22) {threshold * 100:.1f}% 100%"
    )
    marks = (
        f'<div class="fx-thr" style="left:calc({threshold * 100:.1f}% - 1px)" '
        f'title="fracture at ≥ {threshold:.3f}"></div>'
    )
    scale = f"fracture {threshold:.2f}"
    if doubt is not None:
        marks += (
            f'<div class="fx-thr doubt" style="left:calc({doubt * 100:.1f}% - 1px)" '
            f'title="doubt at ≥ {doubt:.3f}"></div>'
        )
    labels = [(threshold, scale)]
    if doubt is not None:
        if threshold - doubt >= 0.2:
            labels.append((doubt, f"doubt {doubt:.2f}"))
        else:  # too close for two labels: one, between the marks
            labels = [((threshold + doubt) / 2, f"doubt {doubt:.2f} · {scale}")]
    scale_html = "".join(
        f'<span class="t" style="left:{min(max(at, 0.14), 0.86) * 100:.1f}%">{text}</span>'
        for at, text in labels
    )
    return (
        f'<div class="fx-bar" style="background:linear-gradient(90deg, {zones})" '
        f'title="probability {probability:.3f}">'
        f'<div class="fx-fill" style="width:{probability * 100:.1f}%"></div>{marks}</div>'
        f'<div class="fx-scale"><span style="left:0">0</span>{scale_html}'
        '<span style="right:0">1</span></div>'
    )


def verdict_card(
    image: Image, prediction: Prediction | None, *, waited_s: float | None = None
) -> None:
    """The three-way answer, the probability against both operating points, model version,
    time taken."""
    if prediction is None:
        if image.status == ImageStatus.FAILED:
            body = (
                '<div class="fx-label">Not analysed</div>'
                f'<div class="fx-prob">{html.escape(image.error or "unknown error")}</div>'
            )
        else:
            body = (
                f'<div class="fx-label">{STATUS_TEXT.get(image.status, image.status)}</div>'
                '<div class="fx-prob">Waiting for a worker to analyse this image.</div>'
            )
        st.markdown(f'<div class="fx-card fail">{body}</div>', unsafe_allow_html=True)
        return
    verdict = verdict_of(prediction)
    timing = [f"model {prediction.inference_ms:.0f} ms (batch of {prediction.batch_size})"]
    if waited_s is not None:
        timing.insert(0, f"answered in {waited_s:.1f} s")
    meta = [
        f"Model <code>{html.escape(prediction.model_version)}</code>",
        f"Threshold {prediction.threshold:.3f} ({html.escape(prediction.threshold_source)})",
        " · ".join(timing),
        f"Analysed {html.escape(local_time(prediction.created_at))}",
    ]
    region = region_line(prediction)
    heading = verdict_text(verdict) + (f" — {region}" if region else "")
    st.markdown(
        f'<div class="fx-card {VERDICT_CLASS.get(verdict, "fail")}">'
        f'<div class="fx-label">{html.escape(heading)}</div>'
        f'<div class="fx-prob">Fracture probability <b>{prediction.probability:.3f}</b></div>'
        f'<div class="fx-ops">{html.escape(operating_points(prediction))}</div>'
        f"{_bar(prediction)}"
        f'<div class="fx-meta">{"<br>".join(meta)}</div></div>',
        unsafe_allow_html=True,
    )
    if verdict == Verdict.DOUBT:
        st.caption(
            "Doubt: the probability lies between the two operating points — below the "
            "fracture threshold, above the more sensitive doubt threshold. Look again."
        )
    if prediction.region_disagrees:
        st.warning(
            f"The file says body part {image.body_part!r}, but the model sees "
            f"{prediction.region}: check that the right image was sent.",
            icon=":material/compare_arrows:",
        )
    if image.warning:
        st.warning(image.warning, icon=":material/warning:")


# -- images --------------------------------------------------------------------------------------


@st.cache_data(max_entries=16, show_spinner=False)
def _decoded(path: str, sha256: str, max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Display pixels and the original's upright (width, height), the frame boxes are in."""
    from model.decode import decode
    from worker.processing import read_verified

    decoded = decode(read_verified(path, sha256), target_size=None, max_pixels=max_pixels)
    return services.display_pixels(decoded.pixels), decoded.upright_size


def _pixels(path: str, sha256: str, max_pixels: int) -> np.ndarray:
    return _decoded(path, sha256, max_pixels)[0]


def boxes_of(prediction: Prediction | None) -> list[services.Box] | None:
    """The prediction's drawable fracture boxes; None when its model draws none."""
    if prediction is None or prediction.boxes is None:
        return None
    return services.valid_boxes(prediction.boxes)


def boxes_note(boxes: list[services.Box] | None, shown: bool) -> str:
    """What the caption says about the boxes."""
    if boxes is None:
        return ""
    if not boxes:
        return " · no fracture region marked"
    if not shown:
        return " · fracture boxes hidden"
    scores = ", ".join(f"{b[4]:.2f}" for b in boxes)
    return f" · {len(boxes)} fracture box{'es' if len(boxes) > 1 else ''} (score {scores})"


def _with_boxes(
    shown: np.ndarray, boxes: list[services.Box] | None, original_size: tuple[int, int]
) -> np.ndarray:
    return services.draw_boxes(shown, boxes, original_size) if boxes else shown


@st.cache_data(max_entries=16, show_spinner=False)
def _stored_heatmap(heatmap_path: str, path: str, sha256: str, max_pixels: int) -> np.ndarray | str:
    """A stored Grad-CAM grid drawn over the image; an overlay file from before grids were
    stored is shown as it is."""
    from model.explain import MAP_SUFFIX, load_map, overlay

    if not heatmap_path.endswith(MAP_SUFFIX):
        return heatmap_path
    return overlay(_pixels(path, sha256, max_pixels), load_map(Path(heatmap_path)))


@st.cache_data(max_entries=16, show_spinner="Computing the heatmap…")
def _heatmap_now(path: str, sha256: str, model_path: str, max_pixels: int) -> np.ndarray:
    from worker.processing import read_verified

    model = classifier(model_path, max_pixels)
    return model.heatmaps([model.prepare(read_verified(path, sha256))])[0]


def _auto_window(pixels: np.ndarray, key: str) -> None:
    low, high = (float(v) for v in np.percentile(pixels, [1, 99]))
    st.session_state[f"{key}-level"] = round((low + high) / 2 * 100)
    st.session_state[f"{key}-width"] = max(1, round((high - low) * 100))


def _reset_window(key: str) -> None:
    st.session_state[f"{key}-level"] = 50
    st.session_state[f"{key}-width"] = 100
    st.session_state[f"{key}-invert"] = False


def viewer(
    image: Image,
    settings_max_pixels: int,
    *,
    key: str,
    boxes: list[services.Box] | None = None,
    show_boxes: bool = True,
) -> None:
    """The radiograph with window/level (centre/width, % of the stored range) and invert, and
    the fracture boxes (when shown) with their scores."""
    from model.decode import DecodeError

    try:
        pixels, original_size = _decoded(image.path, image.sha256, settings_max_pixels)
    except DecodeError as exc:
        st.info(f"The original cannot be shown: {exc}", icon=":material/hide_image:")
        return
    st.session_state.setdefault(f"{key}-level", 50)
    st.session_state.setdefault(f"{key}-width", 100)
    level = st.session_state[f"{key}-level"]
    width = st.session_state[f"{key}-width"]
    invert = st.session_state.get(f"{key}-invert", False)
    windowed = services.apply_window(pixels, level / 100, width / 100, invert=invert)
    st.image(
        _with_boxes(windowed, boxes if show_boxes else None, original_size),
        caption=f"Original · level {level}% · window {width}%"
        + (" · inverted" if invert else "")
        + boxes_note(boxes, show_boxes),
        width="stretch",
    )
    left, right = st.columns(2)
    left.slider("Level (centre)", 0, 100, key=f"{key}-level", help="% of the stored range")
    right.slider("Window (width)", 1, 100, key=f"{key}-width", help="% of the stored range")
    a, b, c = st.columns([1, 1, 1])
    a.toggle("Invert", key=f"{key}-invert")
    b.button("Auto contrast", key=f"{key}-auto", on_click=_auto_window, args=(pixels, key))
    c.button("Reset", key=f"{key}-reset", on_click=_reset_window, args=(key,))


GRAD_CAM_CAPTION = "Grad-CAM: where the model's evidence lies; not an outline of the fracture"
HEAT_CAPTION = "Fracture heat map: where the model, trained on radiologists' outlines, sees one"


def heatmap(
    dashboard: services.Dashboard,
    image: Image,
    prediction: Prediction | None,
    *,
    show_boxes: bool = True,
) -> None:
    """The stored heat map overlay (the model's own fracture map, or Grad-CAM for a model
    without one), or one computed now on request (not stored); boxes drawn over it."""
    if prediction is None:
        st.caption("No heatmap: the image has no prediction.")
        return
    boxes = boxes_of(prediction)
    drawn = boxes if show_boxes else None
    # A model that draws boxes has a heat head: its stored map is that head's, not Grad-CAM.
    caption = GRAD_CAM_CAPTION if boxes is None else HEAT_CAPTION
    from model.decode import DecodeError

    if prediction.heatmap_path and Path(prediction.heatmap_path).is_file():
        try:
            shown = _stored_heatmap(
                prediction.heatmap_path, image.path, image.sha256, dashboard.settings.max_pixels
            )
            if not isinstance(shown, str) and drawn:
                original_size = _decoded(image.path, image.sha256, dashboard.settings.max_pixels)[1]
                shown = _with_boxes(shown, drawn, original_size)
        except (DecodeError, OSError, ValueError) as exc:
            st.info(f"The stored heatmap cannot be shown: {exc}", icon=":material/hide_image:")
            return
        st.image(shown, caption=caption + boxes_note(boxes, show_boxes), width="stretch")
        return
    settings = dashboard.settings
    state_key = f"heatmap-{prediction.id}"
    if st.session_state.get(state_key):
        try:
            overlay = _heatmap_now(
                image.path, image.sha256, str(settings.resolved_model_path), settings.max_pixels
            )
            original_size = _decoded(image.path, image.sha256, settings.max_pixels)[1]
        except (DecodeError, OSError, ValueError) as exc:
            st.info(f"A heatmap cannot be computed: {exc}", icon=":material/hide_image:")
            return
        loaded = classifier(str(settings.resolved_model_path), settings.max_pixels)
        caption = HEAT_CAPTION if loaded.checkpoint.heat else GRAD_CAM_CAPTION
        note = ""
        if loaded.version != prediction.model_version:
            note = f" · computed with {loaded.version}, not the model that made this prediction"
        st.image(
            _with_boxes(overlay, drawn, original_size),
            caption=f"{caption} · computed on request, not stored{note}"
            + boxes_note(boxes, show_boxes),
            width="stretch",
        )
        return
    st.caption("No stored heatmap: the worker stores one for fracture and doubt answers only.")
    if st.button("Compute heatmap", key=f"{state_key}-btn", icon=":material/blur_on:"):
        st.session_state[state_key] = True
        st.rerun()


# -- fields and reviews ------------------------------------------------------------------------


def fields(image: Image, prediction: Prediction | None) -> list[tuple[str, str]]:
    """Every stored field worth showing; never the patient hash."""

    def text(value: object) -> str:
        if value is None:
            return "—"
        if isinstance(value, datetime):
            return local_time(value, seconds=True)
        if isinstance(value, float):
            return f"{value:.4f}"
        return str(value)

    rows = [
        ("Image id", image.id),
        ("File name", image.filename),
        ("Source", image.source),
        ("Status", image.status),
        ("Error", image.error),
        ("Warning", image.warning),
        ("Received", image.received_at),
        ("Updated", image.updated_at),
        ("Sent to worker", image.enqueued_at),
        ("Attempts", image.attempts),
        ("Format", image.format),
        ("Size (bytes)", f"{image.bytes:,}"),
        ("Width × height", f"{image.width} × {image.height}" if image.width else None),
        ("Modality", image.modality),
        ("Body part", image.body_part),
        ("View position", image.view_position),
        ("Study date", image.study_date),
        ("Photometric", image.photometric),
        ("Bits stored", image.bits_stored),
        ("Study UID", image.study_uid),
        ("Series UID", image.series_uid),
        ("SOP instance UID", image.sop_instance_uid),
        ("SOP class UID", image.sop_class_uid),
        ("Sent by (AE title)", image.calling_ae),
        ("SHA-256", image.sha256),
        ("Stored at", image.path),
    ]
    if prediction is not None:
        rows += [
            ("Prediction id", prediction.id),
            ("Model version", prediction.model_version),
            ("Verdict", verdict_text(verdict_of(prediction))),
            ("Label", prediction.label),
            ("Probability", prediction.probability),
            ("Threshold", prediction.threshold),
            ("Doubt threshold", prediction.doubt_threshold),
            ("Fracture boxes", _boxes_field(prediction.boxes)),
            ("Threshold source", prediction.threshold_source),
            ("Region", prediction.region),
            ("Region probability", prediction.region_probability),
            ("Region disagrees", prediction.region_disagrees),
            ("Heatmap file", prediction.heatmap_path),
            ("Batch size", prediction.batch_size),
            ("Inference (ms)", prediction.inference_ms),
            ("Predicted", prediction.created_at),
        ]
    return [(name, text(value)) for name, value in rows]


def _boxes_field(raw: list[list[float]] | None) -> str | None:
    """Stored boxes as text: "[x, y, width, height, score]; …" in original pixels."""
    if raw is None:
        return None  # this model draws no boxes
    boxes = services.valid_boxes(raw)
    if not boxes:
        return "none found"
    return "; ".join(
        f"[{x:.0f}, {y:.0f}, {w:.0f}, {h:.0f}, {score:.2f}]" for x, y, w, h, score in boxes
    )


def fields_table(image: Image, prediction: Prediction | None) -> None:
    with st.expander("All stored fields"):
        st.dataframe(
            {
                "Field": [n for n, _ in fields(image, prediction)],
                "Value": [v for _, v in fields(image, prediction)],
            },
            hide_index=True,
            width="stretch",
        )


def review_panel(dashboard: services.Dashboard, prediction: Prediction) -> None:
    """Confirm or correct the model; each review is kept beside the prediction, never over it."""
    other = (
        browse.NEGATIVE_LABEL
        if prediction.label == browse.POSITIVE_LABEL
        else browse.POSITIVE_LABEL
    )
    # A doubt has no finding to confirm: the reader settles it one way or the other.
    doubt = verdict_of(prediction) == Verdict.DOUBT
    st.markdown('<div class="fx-gap"></div>', unsafe_allow_html=True)
    st.markdown("**Reader review**")
    with st.form(f"review-{prediction.id}", clear_on_submit=True, border=False):
        reader = st.text_input(
            "Reader", value=st.session_state.get("reader_name", ""), max_chars=128
        )
        note = st.text_area("Note (optional)", height=68)
        confirm = st.form_submit_button(
            f"{'Reader sees' if doubt else 'Confirm'}: {label_text(prediction.label)}",
            icon=":material/check:",
            width="stretch",
        )
        correct = st.form_submit_button(
            f"{'Reader sees' if doubt else 'Correct to'}: {label_text(other)}",
            icon=":material/edit:",
            width="stretch",
        )
    if confirm or correct:
        try:
            with transaction(dashboard.factory) as session:
                browse.add_review(
                    session=session,
                    prediction_id=prediction.id,
                    reviewer=reader or "",
                    verdict=prediction.label if confirm else other,
                    note=note,
                )
        except browse.QueryError as exc:
            st.error(f"Review not saved: {exc}.")
        else:
            st.session_state["reader_name"] = " ".join((reader or "").split())
            st.success(f"Review saved: {label_text(prediction.label if confirm else other)}.")
    with dashboard.factory() as session:
        detail = browse.image_detail(session=session, image_id=prediction.image_id)
    reviews = next(
        (p.reviews for p in (detail.predictions if detail else []) if p.id == prediction.id), []
    )
    if not reviews:
        st.caption("Not reviewed yet.")
    for review in reversed(reviews):
        mark = "✓ agrees" if review.agrees else "✗ corrected to"
        note_text = f" — “{html.escape(review.note)}”" if review.note else ""
        st.markdown(
            f'<div class="fx-review"><b>{html.escape(review.reviewer)}</b> {mark} '
            f"<b>{html.escape(label_text(review.verdict))}</b>"
            f"{note_text}<br><span style='opacity:.7'>"
            f"{html.escape(local_time(review.created_at))}</span></div>",
            unsafe_allow_html=True,
        )


def earlier_predictions(predictions: list[Prediction]) -> list[dict[str, object]]:
    """Rows for the history expander: every prediction but the latest, newest first."""
    newest_first = sorted(predictions, key=lambda p: (p.created_at, p.id), reverse=True)
    return [
        {
            "Model version": p.model_version,
            "Predicted": local_time(p.created_at),
            "Verdict": verdict_text(verdict_of(p)),
            "Probability": round(p.probability, 3),
        }
        for p in newest_first[1:]
    ]


def detail(
    dashboard: services.Dashboard,
    image_id: int,
    *,
    prediction_id: int | None = None,
    waited_s: float | None = None,
    key: str = "detail",
) -> Image | None:
    """One image: original with window/level and fracture boxes, heatmap, verdict, review,
    earlier predictions, every stored field."""
    with dashboard.factory() as session:
        image = browse.image_detail(session=session, image_id=image_id)
    if image is None:
        st.warning(f"There is no image #{image_id}.")
        return None
    predictions = sorted(image.predictions, key=lambda p: (p.created_at, p.id), reverse=True)
    latest = predictions[0] if predictions else None
    prediction = next((p for p in predictions if p.id == prediction_id), None) or latest
    if len(predictions) > 1:
        versions = [p.model_version for p in predictions]
        chosen = st.selectbox(
            "Model version",
            versions,
            index=versions.index(prediction.model_version) if prediction else 0,
            format_func=lambda v: f"{v} (latest)" if v == versions[0] else v,
            key=f"{key}-version",
            help="Each model version that scored this image keeps its own prediction.",
        )
        prediction = next(p for p in predictions if p.model_version == chosen)
    st.markdown(
        f"#### {html.escape(image.filename)}  \n"
        f"<span style='opacity:.75'>image #{image.id} · {html.escape(image.source)} · "
        f"{STATUS_TEXT.get(image.status, image.status)} · received "
        f"{html.escape(local_time(image.received_at))}</span>",
        unsafe_allow_html=True,
    )
    if image.status == ImageStatus.FAILED:
        reason = image.error or "no error text stored"
        st.error(f"Analysis failed: {reason}", icon=":material/error:")
    boxes = boxes_of(prediction)
    show_boxes = True
    if boxes:
        show_boxes = st.toggle(
            "Show fracture boxes",
            value=True,
            key=f"{key}-boxes",
            help="Where the model locates a fracture, each box with its score (0–1). "
            "A box is a pointer for the reader, not an outline.",
        )
    original, overlay, side = st.columns([5, 5, 4], gap="medium")
    with original:
        viewer(
            image,
            dashboard.settings.max_pixels,
            key=f"{key}-{image.id}",
            boxes=boxes,
            show_boxes=show_boxes,
        )
    with overlay:
        heatmap(dashboard, image, prediction, show_boxes=show_boxes)
    with side:
        verdict_card(image, prediction, waited_s=waited_s)
        if prediction is not None:
            review_panel(dashboard, prediction)
    if len(predictions) > 1:
        earlier = earlier_predictions(predictions)
        with st.expander(f"Earlier predictions ({len(earlier)}) by other model versions"):
            st.dataframe(earlier, hide_index=True, width="stretch")
            st.caption(
                "Newest first. Choose a version above to see its prediction in full; "
                "each is kept as it was stored."
            )
    dicom_panel(dashboard, image, predictions, key=key)
    fields_table(image, prediction)
    return image


# -- DICOM: the study and the results sent to PACS ---------------------------------------------


def show_in_browse(filters: dict[str, object], open_image: int | None = None) -> None:
    """Browse with only these filters set (widget key → value) and first page shown; a button
    callback, so it runs before any widget it sets is drawn. The caller switches page."""
    for name in BROWSE_FILTER_KEYS:
        st.session_state.pop(name, None)
    st.session_state["f-model"] = LATEST
    for name, value in filters.items():
        st.session_state[name] = value
    st.session_state["page"] = 1
    if open_image is not None:
        st.session_state["open-image"] = open_image
        st.session_state["open-prediction"] = None


def _send_again(factory: sessionmaker[Session], image_id: int, key: str) -> None:
    again = services.retry_image(factory, image_id, now=utcnow())
    st.session_state[key] = again


def _meta(lines: list[tuple[str, str | None]]) -> str:
    return "<br>".join(
        f"{name} <code>{html.escape(value)}</code>" for name, value in lines if value
    )


def export_line(
    dashboard: services.Dashboard, prediction: Prediction, export: DicomExport | None
) -> str:
    settings = dashboard.settings
    destination = str(settings.destination) if settings.destination else None
    text = services.export_text(
        export,
        destination=destination,
        max_attempts=settings.dicom_send_attempts,
        now=utcnow(),
        when=local_time,
    )
    # One line: a line break in a stored error would end the HTML block it is shown in.
    return " ".join(f"{prediction.model_version}: {text}".split())


def dicom_panel(
    dashboard: services.Dashboard, image: Image, predictions: list[Prediction], *, key: str
) -> None:
    """For an instance received over DICOM: its study, series, instance and sender, the other
    instances of its study, and each prediction's results on their way to PACS."""
    with dashboard.factory() as session:
        sends = {e.prediction_id: e for e in exports.for_image(session=session, image_id=image.id)}
        study: tuple[list[Image], int] | None = None
        if image.study_uid:
            study = browse.study_images(
                session=session, study_uid=image.study_uid, limit=STUDY_ROWS
            )
    received = image.source == ImageSource.DICOM or bool(image.study_uid)
    pacs = services.shows_pacs_state(image, dashboard.settings, bool(sends))
    if not (received or pacs):
        return
    with st.container(border=True):
        st.markdown("**DICOM**")
        if received:
            identity = _meta(
                [
                    ("Study UID", image.study_uid),
                    ("Series UID", image.series_uid),
                    ("SOP instance UID", image.sop_instance_uid),
                    ("Sent by AE title", image.calling_ae),
                ]
            )
            st.markdown(
                f'<div class="fx-meta">{identity or "No DICOM identity stored."}</div>',
                unsafe_allow_html=True,
            )
        if study is not None:
            _study_instances(image, *study, key=key)
        if pacs:
            _pacs_state(dashboard, image, predictions, sends, key=key)


def _study_instances(image: Image, instances: list[Image], total: int, *, key: str) -> None:
    """How many other instances the study has, a button to browse them, the first few."""
    others = [i for i in instances if i.id != image.id]
    count = total - 1
    line = st.columns([3, 2], vertical_alignment="center")
    line[0].markdown(
        f"**{count}** other instance{'s' if count != 1 else ''} in this study"
        if count
        else "No other instance of this study has been received."
    )
    if line[1].button(
        "Show this study in Browse",
        key=f"{key}-study-{image.id}",
        icon=":material/filter_alt:",
        on_click=show_in_browse,
        args=({"f-study": image.study_uid}, image.id),
        width="stretch",
    ):
        st.switch_page(BROWSE_PAGE)
    if not others:
        return
    latest = [max(i.predictions, key=lambda p: p.id, default=None) for i in others]
    st.dataframe(
        {
            "Image": [i.id for i in others],
            "Series": [services.short_uid(i.series_uid) for i in others],
            "Body part": [i.body_part or "" for i in others],
            "View": [i.view_position or "" for i in others],
            "Status": [STATUS_TEXT.get(i.status, i.status) for i in others],
            "Verdict": [verdict_text(verdict_of(p)) if p else "" for p in latest],
            "Probability": [round(p.probability, 3) if p else None for p in latest],
        },
        hide_index=True,
        width="stretch",
    )
    if total > len(instances):
        st.caption(f"The first {len(instances)} of {total} instances, in order of arrival.")


def _pacs_state(
    dashboard: services.Dashboard,
    image: Image,
    predictions: list[Prediction],
    sends: dict[int, DicomExport],
    *,
    key: str,
) -> None:
    destination = dashboard.settings.destination
    where = (
        f"to <code>{html.escape(str(destination))}</code>"
        if destination
        else "— no destination configured (FRACTURE_DICOM_DESTINATION)"
    )
    st.markdown(
        f"**Results to PACS** (secondary capture and structured report) {where}",
        unsafe_allow_html=True,
    )
    if not predictions:
        st.caption("Nothing to send: the image has no prediction.")
        return
    lines = [export_line(dashboard, p, sends.get(p.id)) for p in predictions]
    st.markdown(
        '<div class="fx-meta">'
        + "<br>".join(html.escape(line, quote=False) for line in lines)
        + "</div>",
        unsafe_allow_html=True,
    )
    done_key = f"{key}-resent-{image.id}"
    again = st.session_state.pop(done_key, None)
    if again is not None:
        st.success(
            f"{again} result(s) queued again. {services.SENDER_PICKUP}"
            if again
            else "Nothing to send again: no failed result left.",
            icon=":material/send:",
        )
    if any(e.state == ExportState.FAILED for e in sends.values()):
        st.button(
            "Send again",
            key=f"{key}-resend-{image.id}",
            icon=":material/send:",
            on_click=_send_again,
            args=(dashboard.factory, image.id, done_key),
        )
        st.caption(
            "Send again puts this image's failed results back in the queue with fresh "
            f"attempts. {services.SENDER_PICKUP}"
        )
