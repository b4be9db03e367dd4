"""One image's record: the viewer with its heat map and boxes, every stored field, the reader's
review, earlier predictions, and for DICOM the study and the results sent to PACS."""

from __future__ import annotations

import html
from datetime import datetime
from pathlib import Path

import streamlit as st
from sqlalchemy.orm import Session, sessionmaker

from dashboard import access, services, signin, ui, verdict
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
    utcnow,
)
from db.session import transaction

STUDY_ROWS = 50  # instances of a study listed in the record view


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
    cookie = signin.sign_in_token() if tokens is not None else None
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


def fields(image: Image, prediction: Prediction | None) -> list[tuple[str, str]]:
    """Every stored field worth showing; never the patient hash."""

    def text(value: object) -> str:
        if value is None:
            return "—"
        if isinstance(value, datetime):
            return ui.local_time(value, seconds=True)
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
            ("Verdict", ui.verdict_text(verdict.verdict_of(prediction))),
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
    doubt = verdict.verdict_of(prediction) == Verdict.DOUBT
    st.markdown('<div class="fx-gap"></div>', unsafe_allow_html=True)
    st.markdown("**Reader review**")
    with st.form(f"review-{prediction.id}", clear_on_submit=True, border=False):
        reader = st.text_input(
            "Reader", value=st.session_state.get("reader_name", ""), max_chars=128
        )
        note = st.text_area("Note (optional)", height=68)
        confirm = st.form_submit_button(
            f"{'Reader sees' if doubt else 'Confirm'}: {ui.label_text(prediction.label)}",
            icon=":material/check:",
            width="stretch",
        )
        correct = st.form_submit_button(
            f"{'Reader sees' if doubt else 'Correct to'}: {ui.label_text(other)}",
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
            st.success(f"Review saved: {ui.label_text(prediction.label if confirm else other)}.")
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
            f"<b>{html.escape(ui.label_text(review.verdict))}</b>"
            f"{note_text}<br><span style='opacity:.7'>"
            f"{html.escape(ui.local_time(review.created_at))}</span></div>",
            unsafe_allow_html=True,
        )


def earlier_predictions(predictions: list[Prediction]) -> list[dict[str, object]]:
    """Rows for the history expander: every prediction but the latest, newest first."""
    newest_first = sorted(predictions, key=lambda p: (p.created_at, p.id), reverse=True)
    return [
        {
            "Model version": p.model_version,
            "Predicted": ui.local_time(p.created_at),
            "Verdict": ui.verdict_text(verdict.verdict_of(p)),
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
        f"{ui.STATUS_TEXT.get(image.status, image.status)} · received "
        f"{html.escape(ui.local_time(image.received_at))}</span>",
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
        verdict.verdict_card(image, prediction, waited_s=waited_s)
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
        when=ui.local_time,
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
        on_click=ui.show_in_browse,
        args=({"f-study": image.study_uid}, image.id),
        width="stretch",
    ):
        st.switch_page(ui.BROWSE_PAGE)
    if not others:
        return
    latest = [max(i.predictions, key=lambda p: p.id, default=None) for i in others]
    st.dataframe(
        {
            "Image": [i.id for i in others],
            "Series": [services.short_uid(i.series_uid) for i in others],
            "Body part": [i.body_part or "" for i in others],
            "View": [i.view_position or "" for i in others],
            "Status": [ui.STATUS_TEXT.get(i.status, i.status) for i in others],
            "Verdict": [ui.verdict_text(verdict.verdict_of(p)) if p else "" for p in latest],
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
