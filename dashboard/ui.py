"""Streamlit pieces the pages share: the process-wide context, the notice, the sign-in gate,
the verdict card, the image viewer (window/level), the heatmap, all fields, the review form, and
the DICOM panel (study, sender, results sent to PACS).
"""

from __future__ import annotations

import hashlib
import html
import os
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import streamlit as st
from sqlalchemy.orm import Session, sessionmaker

from dashboard import access, services
from dashboard import viewer as viewer_links
from db import browse, exports, reviews
from db.models import (
    DicomExport,
    ExportState,
    Image,
    ImageSource,
    ImageStatus,
    Prediction,
    Verdict,
    as_utc,
    utcnow,
)
from db.session import transaction

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
LATEST = "latest"
# Browse's sidebar filters: widget key → the value that filters nothing.
BROWSE_FILTERS: dict[str, object] = {
    "f-verdicts": [],
    "f-prob": (0.0, 1.0),
    "f-dates": [],
    "f-sources": [],
    "f-statuses": [],
    "f-review": browse.ReviewState.ANY,
    "f-name": "",
    "f-regions": [],
    "f-disagree": False,
    "f-study": None,
    "f-export": [],
    "f-reason": None,
    "f-model": LATEST,
}
STUDY_ROWS = 50  # instances of a study listed in the record view

_CSS = """
<style>
[data-testid="stMainBlockContainer"] {padding-top: 3.2rem;}
.fx-notice {border-left: 4px solid #f08c00; background: rgba(240,140,0,.10);
  padding: .35rem .8rem; border-radius: .3rem; font-size: .9rem; margin-bottom: .6rem;}
.fx-card {border: 1px solid rgba(128,128,128,.35); border-radius: .5rem; padding: .9rem 1rem;}
.fx-card.pos {border: 2px solid #e03131; border-left: 8px solid #e03131;
  background: rgba(224,49,49,.10);}
.fx-card.doubt {border-left: 6px solid #e67700; background: rgba(230,119,0,.07);}
.fx-card.neg {border-left: 4px solid #1c7ed6; background: rgba(28,126,214,.03);}
.fx-card.fail {border-left: 6px solid #868e96; background: rgba(134,142,150,.08);}
.fx-label {font-size: 1.45rem; font-weight: 700; letter-spacing: .01em; line-height: 1.2;}
.fx-card.pos .fx-label {color: #e03131; font-weight: 800;}
.fx-card.doubt .fx-label {color: #e67700;}
.fx-card.neg .fx-label {color: #1c7ed6; font-weight: 600;}
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
.fx-legend {font-size: .78rem; opacity: .85; font-variant-numeric: tabular-nums;}
.fx-key {display: inline-block; width: 3px; height: .8rem; margin-right: .3rem;
  vertical-align: -0.1rem; background: currentColor;}
.fx-key.doubt {width: 2px; opacity: .7;}
.fx-note {font-size: .8rem; opacity: .8; margin-top: .45rem; line-height: 1.4;}
.fx-region {font-size: .92rem; margin-top: .5rem;}
.fx-meta {font-size: .82rem; opacity: .85; margin-top: .5rem; line-height: 1.5;}
.fx-meta code {font-size: .78rem;}
@media (max-width: 640px) {
  [data-testid="stColumn"]:has(> div > [class*="st-key-fx-side"]),
  [data-testid="stColumn"]:has([class*="st-key-fx-side"]) {order: -1;}
  [data-testid="stMainBlockContainer"] {padding-top: 2.6rem;}
}
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
    from config import build_settings

    del environment  # the cache key: a new FRACTURE_* environment builds a new context
    return services.Dashboard.start(build_settings())


def dashboard() -> services.Dashboard:
    """The process's settings, database and broker handles; stops the page on bad settings."""
    from config import UserError

    environment = sorted((k, v) for k, v in os.environ.items() if k.startswith("FRACTURE_"))
    key = hashlib.sha256(repr(environment).encode()).hexdigest()
    try:
        return _dashboard(key)
    except UserError as exc:
        st.error(f"The dashboard cannot start: {exc}")
        st.stop()
        raise  # unreachable: st.stop() ends the run


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


def sign_in_token() -> str | None:
    """The sign-in cookie this browser opened the session with (see dashboard/access.py)."""
    return st.context.cookies.get(access.COOKIE)


def gate(dashboard: services.Dashboard) -> bool:
    """True when the reader may see the dashboard: no password set, or this browser's sign-in
    is still valid. The server's gate refuses a browser that never signed in; this check ends a
    session whose sign-in expired or was signed out (in any tab) while it was open."""
    tokens = access.tokens_for(dashboard.settings)
    if tokens is None or tokens.valid(sign_in_token()):
        return True
    st.subheader("Signed out")
    here = urlsplit(st.context.url or "/").path or "/"
    query = urlencode(st.query_params.to_dict())
    st.markdown(
        "This browser's sign-in has ended: signed out, expired after "
        f"{access.LIFETIME_S // 3600} hours, or the dashboard was restarted. "
        f"[Sign in again]({access.sign_in_url(here + (f'?{query}' if query else ''))})"
    )
    return False


def sign_out_button(dashboard: services.Dashboard) -> None:
    """Signs this browser out everywhere: its cookie is refused from now on, for pages, images
    and exports alike."""
    tokens = access.tokens_for(dashboard.settings)
    if tokens is not None:
        st.sidebar.button(
            "Sign out",
            icon=":material/logout:",
            on_click=tokens.revoke,
            args=(sign_in_token(),),
        )


def while_signed_in(
    dashboard: services.Dashboard, produce: Callable[[], bytes]
) -> Callable[[], bytes]:
    """`produce`, refused once this browser's sign-in has ended: a download runs at its click,
    which may come long after the page was drawn."""
    tokens = access.tokens_for(dashboard.settings)
    token = sign_in_token()

    def checked() -> bytes:
        if tokens is not None and not tokens.valid(token):
            raise PermissionError("this browser is signed out: sign in again to export")
        return produce()

    return checked


# -- time ----------------------------------------------------------------------------------------


def browser_zone() -> tzinfo:
    name = st.context.timezone
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return UTC


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
    """The probability against the operating points, with the digits the bar uses: "p = 0.370;
    the fracture threshold is 0.050, the doubt threshold 0.020"."""
    threshold = f"the fracture threshold is {prediction.threshold:.3f}"
    if prediction.threshold_source.startswith("region:"):
        threshold += f" (for {prediction.threshold_source.removeprefix('region:')})"
    text = f"p = {prediction.probability:.3f}; {threshold}"
    if prediction.doubt_threshold is None:
        return text + " (one operating point: no doubt band for this model)"
    return text + f", the doubt threshold {prediction.doubt_threshold:.3f}"


PROBABILITY_NOTE = (
    "p is the model's calibrated probability of a fracture. The thresholds were chosen on "
    "validation images for a target sensitivity, so that few fractures are missed: a fracture "
    "can be suspected at a low p."
)


def _bar(prediction: Prediction) -> str:
    """The probability bar: zones no fracture / doubt / fracture, the operating points marked and
    named in a legend below (a label at its mark would cover the scale's ends)."""
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
        f'title="fracture threshold {threshold:.3f}"></div>'
    )
    legend = f'<span class="fx-key"></span>fracture threshold {threshold:.3f}'
    if doubt is not None:
        marks += (
            f'<div class="fx-thr doubt" style="left:calc({doubt * 100:.1f}% - 1px)" '
            f'title="doubt threshold {doubt:.3f}"></div>'
        )
        legend += f' · <span class="fx-key doubt"></span>doubt threshold {doubt:.3f}'
    return (
        f'<div class="fx-bar" style="background:linear-gradient(90deg, {zones})" '
        f'title="probability {probability:.3f}">'
        f'<div class="fx-fill" style="width:{probability * 100:.1f}%"></div>{marks}</div>'
        '<div class="fx-scale"><span style="left:0">0</span><span style="right:0">1</span></div>'
        f'<div class="fx-legend">{legend}</div>'
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
        " · ".join(timing),
        f"Analysed {html.escape(local_time(prediction.created_at))}",
    ]
    # The region has its own line and its own confidence: beside the verdict, readers took it
    # for the confidence in the finding.
    region = region_line(prediction)
    region_html = (
        f'<div class="fx-region">Body region (model\'s guess): {html.escape(region)}</div>'
        if region
        else ""
    )
    st.markdown(
        f'<div class="fx-card {VERDICT_CLASS.get(verdict, "fail")}">'
        f'<div class="fx-label">{html.escape(verdict_text(verdict))}</div>'
        f'<div class="fx-prob">Fracture probability <b>{prediction.probability:.3f}</b></div>'
        f'<div class="fx-ops">{html.escape(operating_points(prediction))}</div>'
        f"{_bar(prediction)}"
        f'<div class="fx-note">{html.escape(PROBABILITY_NOTE)}</div>'
        f"{region_html}"
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


def boxes_of(prediction: Prediction | None) -> list[services.Box] | None:
    """The prediction's drawable fracture boxes; None when its model draws none."""
    if prediction is None or prediction.boxes is None:
        return None
    return services.valid_boxes(prediction.boxes)


def boxes_note(boxes: list[services.Box] | None) -> str:
    """What the caption says about the boxes."""
    if boxes is None:
        return ""
    if not boxes:
        return " · no fracture region marked"
    scores = ", ".join(f"{b[4]:.2f}" for b in boxes)
    return f" · {len(boxes)} fracture box{'es' if len(boxes) > 1 else ''} (score {scores})"


GRAD_CAM_CAPTION = "Grad-CAM: where the model's evidence lies; not an outline of the fracture"
HEAT_CAPTION = "Fracture heat map: where the model, trained on radiologists' outlines, sees one"
VIEWER_PX = 620  # the viewer's height: the image and two rows of controls


HEATMAP_WAIT_S = 30.0  # a worker draws one in well under a second once it picks the request up


def _heat_source(
    dashboard: services.Dashboard, image: Image, prediction: Prediction | None
) -> tuple[viewer_links.Source | None, str]:
    """The stored heat map the viewer overlays and its caption; one asked for with "Draw
    heatmap" is drawn and stored by a worker (the dashboard runs no model) and waited for."""
    from model.explain import MAP_SUFFIX

    if prediction is None:
        return None, "No heatmap: the image has no prediction."
    # A model that draws boxes has a heat head: its stored map is that head's, not Grad-CAM.
    caption = GRAD_CAM_CAPTION if prediction.boxes is None else HEAT_CAPTION
    stored = prediction.heatmap_path
    key = f"heatmap-{prediction.id}"
    if st.session_state.get(key) and not (stored and Path(stored).is_file()):
        st.session_state[key] = False
        with st.spinner("A worker is drawing the heatmap…"):
            stored = services.wait_for_heatmap(
                dashboard.factory, prediction.id, timeout_s=HEATMAP_WAIT_S
            )
        if stored is None:
            st.info(
                f"No heatmap after {HEATMAP_WAIT_S:.0f} s: the workers may be busy with a "
                "large drop, or the file cannot be read any more. Try again later.",
                icon=":material/hourglass_empty:",
            )
            return None, ""
    if stored and stored.endswith(MAP_SUFFIX) and Path(stored).is_file():
        return viewer_links.Source(kind="heat", path=stored), caption
    if stored and Path(stored).is_file():  # an overlay stored before maps were: shown as it is
        st.image(stored, caption=caption, width="stretch")
        return None, caption
    return None, ""


def viewer(
    dashboard: services.Dashboard, image: Image, prediction: Prediction | None, *, key: str
) -> None:
    """The radiograph in the browser's viewer (dashboard/viewer.py): zoom and pan, window/level
    with the DICOM file's windows as presets, heat map and fracture boxes as overlays. Nothing
    is decoded here: the browser asks for the pixels over its own signed-in link."""
    if image.status == ImageStatus.FAILED and not Path(image.path).is_file():
        st.info("The original cannot be shown: its file is gone.", icon=":material/hide_image:")
        return
    tokens = access.tokens_for(dashboard.settings)
    cookie = sign_in_token() if tokens is not None else None
    source = viewer_links.Source(
        kind="image", path=image.path, sha256=image.sha256, max_pixels=dashboard.settings.max_pixels
    )
    heat, heat_caption = _heat_source(dashboard, image, prediction)
    boxes = boxes_of(prediction)
    spec = {
        "title": f"Image #{image.id}",
        "image": viewer_links.LINKS.issue(source, cookie),
        "heat": viewer_links.LINKS.issue(heat, cookie) if heat is not None else None,
        "heatOn": heat is not None,
        "boxes": [list(b) for b in boxes or []],
    }
    st.iframe(
        viewer_links.page(spec),
        height=VIEWER_PX,
        alt=f"Radiograph viewer, image #{image.id}",
    )
    size = f"{image.width} × {image.height} px" if image.width else "original"
    st.caption(
        f"Original, {size}, at full resolution · scroll or pinch to zoom, drag to pan, "
        "shift-drag for window/level"
        + (f" · {heat_caption}" if heat_caption and heat is not None else "")
        + boxes_note(boxes)
    )
    if prediction is not None and heat is None and not heat_caption:
        st.caption("No stored heatmap: the worker stores one for fracture and doubt answers only.")
        if st.button("Draw heatmap", key=f"heatmap-{prediction.id}-btn", icon=":material/blur_on:"):
            refused = services.request_heatmap(dashboard, prediction)
            if refused is None:
                st.session_state[f"heatmap-{prediction.id}"] = True
                st.rerun()
            st.info(f"A heatmap cannot be drawn now: {refused}.", icon=":material/hide_image:")


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
                reviews.add_review(
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
    stored = next(
        (p.reviews for p in (detail.predictions if detail else []) if p.id == prediction.id), []
    )
    if not stored:
        st.caption("Not reviewed yet.")
    for review in reversed(stored):
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
    # On a phone the columns stack: the verdict comes first (CSS: .st-key-fx-side).
    picture, side = st.columns([7, 4], gap="medium")
    with picture:
        viewer(dashboard, image, prediction, key=key)
    with side, st.container(key=f"fx-side-{key}"):
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


def clear_browse_filters() -> None:
    """Every Browse filter back to the value that filters nothing, first page shown. A callback
    (it runs before the widgets are drawn). Each value is set, not deleted: a deleted key leaves
    the browser showing the old value, and sending it back with the next change."""
    for name, value in BROWSE_FILTERS.items():
        st.session_state[name] = list(value) if isinstance(value, list) else value
    st.session_state["page"] = 1


def show_in_browse(filters: dict[str, object], open_image: int | None = None) -> None:
    """Browse with only these filters set (widget key → value) and first page shown; a button
    callback, so it runs before any widget it sets is drawn. The caller switches page."""
    clear_browse_filters()
    for name, value in filters.items():
        st.session_state[name] = value
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
