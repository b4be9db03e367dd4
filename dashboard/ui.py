"""Streamlit pieces the pages share: the process-wide context, the notice, the sign-in gate,
the verdict card, the image viewer (window/level), the heatmap, all fields, and the review form.
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

from dashboard import services
from db import browse, queries
from db.models import Image, ImageStatus, Prediction
from db.session import transaction

if TYPE_CHECKING:
    from model.inference import Classifier

LABEL_TEXT = {
    browse.POSITIVE_LABEL: "Fracture suspected",
    browse.NEGATIVE_LABEL: "No fracture suspected",
}
STATUS_TEXT: dict[str, str] = {
    ImageStatus.QUEUED: "Queued",
    ImageStatus.PROCESSING: "Processing",
    ImageStatus.DONE: "Done",
    ImageStatus.FAILED: "Failed",
}

_CSS = """
<style>
[data-testid="stMainBlockContainer"] {padding-top: 3.2rem;}
.fx-notice {border-left: 4px solid #f08c00; background: rgba(240,140,0,.10);
  padding: .35rem .8rem; border-radius: .3rem; font-size: .9rem; margin-bottom: .6rem;}
.fx-card {border: 1px solid rgba(128,128,128,.35); border-radius: .5rem; padding: .9rem 1rem;}
.fx-card.pos {border-left: 6px solid #e03131; background: rgba(224,49,49,.07);}
.fx-card.neg {border-left: 6px solid #1c7ed6; background: rgba(28,126,214,.06);}
.fx-card.fail {border-left: 6px solid #868e96; background: rgba(134,142,150,.08);}
.fx-label {font-size: 1.45rem; font-weight: 700; letter-spacing: .01em; line-height: 1.2;}
.fx-card.pos .fx-label {color: #e03131;}
.fx-card.neg .fx-label {color: #1c7ed6;}
.fx-prob {font-size: 1.0rem; margin: .35rem 0 .2rem 0; font-variant-numeric: tabular-nums;}
.fx-bar {position: relative; height: 14px; border-radius: 7px; margin: .4rem 0 .15rem 0;
  background: linear-gradient(90deg, rgba(28,126,214,.25), rgba(224,49,49,.25));}
.fx-fill {position: absolute; top: 0; left: 0; bottom: 0; border-radius: 7px;
  background: rgba(128,128,128,.55);}
.fx-card.pos .fx-fill {background: #e03131;}
.fx-card.neg .fx-fill {background: #1c7ed6;}
.fx-thr {position: absolute; top: -4px; bottom: -4px; width: 3px; background: currentColor;
  border-radius: 1px;}
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


def verdict_card(
    image: Image, prediction: Prediction | None, *, waited_s: float | None = None
) -> None:
    """Label, probability bar with the threshold marked, model version, time taken."""
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
    positive = prediction.label == browse.POSITIVE_LABEL
    probability = min(max(prediction.probability, 0.0), 1.0)
    threshold = min(max(prediction.threshold, 0.0), 1.0)
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
    heading = label_text(prediction.label) + (f" — {region}" if region else "")
    st.markdown(
        f'<div class="fx-card {"pos" if positive else "neg"}">'
        f'<div class="fx-label">{html.escape(heading)}</div>'
        f'<div class="fx-prob">Fracture probability <b>{prediction.probability:.3f}</b> '
        f"{'≥' if positive else '<'} threshold {prediction.threshold:.3f}</div>"
        f'<div class="fx-bar" title="probability {probability:.3f}">'
        f'<div class="fx-fill" style="width:{probability * 100:.1f}%"></div>'
        f'<div class="fx-thr" style="left:calc({threshold * 100:.1f}% - 1px)" '
        f'title="threshold {threshold:.3f}"></div></div>'
        '<div class="fx-scale"><span style="left:0">0</span>'
        f'<span class="t" style="left:{min(max(threshold, 0.12), 0.88) * 100:.1f}%">'
        f'threshold {threshold:.2f}</span><span style="right:0">1</span></div>'
        f'<div class="fx-meta">{"<br>".join(meta)}</div></div>',
        unsafe_allow_html=True,
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
def _pixels(path: str, sha256: str, max_pixels: int) -> np.ndarray:
    from model.decode import decode
    from worker.processing import read_verified

    decoded = decode(read_verified(path, sha256), target_size=None, max_pixels=max_pixels)
    return services.display_pixels(decoded.pixels)


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


def viewer(image: Image, settings_max_pixels: int, *, key: str) -> None:
    """The radiograph with window/level (centre/width, % of the stored range) and invert."""
    from model.decode import DecodeError

    try:
        pixels = _pixels(image.path, image.sha256, settings_max_pixels)
    except DecodeError as exc:
        st.info(f"The original cannot be shown: {exc}", icon=":material/hide_image:")
        return
    st.session_state.setdefault(f"{key}-level", 50)
    st.session_state.setdefault(f"{key}-width", 100)
    level = st.session_state[f"{key}-level"]
    width = st.session_state[f"{key}-width"]
    invert = st.session_state.get(f"{key}-invert", False)
    st.image(
        services.apply_window(pixels, level / 100, width / 100, invert=invert),
        caption=f"Original · level {level}% · window {width}%" + (" · inverted" if invert else ""),
        width="stretch",
    )
    left, right = st.columns(2)
    left.slider("Level (centre)", 0, 100, key=f"{key}-level", help="% of the stored range")
    right.slider("Window (width)", 1, 100, key=f"{key}-width", help="% of the stored range")
    a, b, c = st.columns([1, 1, 1])
    a.toggle("Invert", key=f"{key}-invert")
    b.button("Auto contrast", key=f"{key}-auto", on_click=_auto_window, args=(pixels, key))
    c.button("Reset", key=f"{key}-reset", on_click=_reset_window, args=(key,))


def heatmap(dashboard: services.Dashboard, image: Image, prediction: Prediction | None) -> None:
    """The stored Grad-CAM overlay, or one computed now on request (not stored)."""
    caption = "Grad-CAM: where the model's evidence lies; not an outline of the fracture"
    if prediction is None:
        st.caption("No heatmap: the image has no prediction.")
        return
    if prediction.heatmap_path and Path(prediction.heatmap_path).is_file():
        from model.decode import DecodeError

        try:
            shown = _stored_heatmap(
                prediction.heatmap_path, image.path, image.sha256, dashboard.settings.max_pixels
            )
        except (DecodeError, OSError, ValueError) as exc:
            st.info(f"The stored heatmap cannot be shown: {exc}", icon=":material/hide_image:")
            return
        st.image(shown, caption=caption, width="stretch")
        return
    settings = dashboard.settings
    state_key = f"heatmap-{prediction.id}"
    if st.session_state.get(state_key):
        from model.decode import DecodeError

        try:
            overlay = _heatmap_now(
                image.path, image.sha256, str(settings.resolved_model_path), settings.max_pixels
            )
        except (DecodeError, OSError, ValueError) as exc:
            st.info(f"A heatmap cannot be computed: {exc}", icon=":material/hide_image:")
            return
        note = ""
        loaded = classifier(str(settings.resolved_model_path), settings.max_pixels)
        if loaded.version != prediction.model_version:
            note = f" · computed with {loaded.version}, not the model that made this prediction"
        st.image(
            overlay,
            caption=f"{caption} · computed on request, not stored{note}",
            width="stretch",
        )
        return
    st.caption("No stored heatmap: the worker stores one for positive findings only.")
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
        ("SHA-256", image.sha256),
        ("Stored at", image.path),
    ]
    if prediction is not None:
        rows += [
            ("Prediction id", prediction.id),
            ("Model version", prediction.model_version),
            ("Label", prediction.label),
            ("Probability", prediction.probability),
            ("Threshold", prediction.threshold),
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
    st.markdown('<div class="fx-gap"></div>', unsafe_allow_html=True)
    st.markdown("**Reader review**")
    with st.form(f"review-{prediction.id}", clear_on_submit=True, border=False):
        reader = st.text_input(
            "Reader", value=st.session_state.get("reader_name", ""), max_chars=128
        )
        note = st.text_area("Note (optional)", height=68)
        confirm = st.form_submit_button(
            f"Confirm: {label_text(prediction.label)}", icon=":material/check:", width="stretch"
        )
        correct = st.form_submit_button(
            f"Correct to: {label_text(other)}", icon=":material/edit:", width="stretch"
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


def detail(
    dashboard: services.Dashboard,
    image_id: int,
    *,
    prediction_id: int | None = None,
    waited_s: float | None = None,
    key: str = "detail",
) -> Image | None:
    """One image: original with window/level, heatmap, verdict, review, every stored field."""
    with dashboard.factory() as session:
        image = browse.image_detail(session=session, image_id=image_id)
    if image is None:
        st.warning(f"There is no image #{image_id}.")
        return None
    predictions = sorted(image.predictions, key=lambda p: p.created_at, reverse=True)
    prediction = next((p for p in predictions if p.id == prediction_id), None) or (
        queries.latest_prediction(image)
    )
    if len(predictions) > 1:
        versions = [p.model_version for p in predictions]
        chosen = st.selectbox(
            "Model version",
            versions,
            index=versions.index(prediction.model_version) if prediction else 0,
            key=f"{key}-version",
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
    original, overlay, side = st.columns([5, 5, 4], gap="medium")
    with original:
        viewer(image, dashboard.settings.max_pixels, key=f"{key}-{image.id}")
    with overlay:
        heatmap(dashboard, image, prediction)
    with side:
        verdict_card(image, prediction, waited_s=waited_s)
        if prediction is not None:
            review_panel(dashboard, prediction)
    fields_table(image, prediction)
    return image
