"""The verdict card: the call first (fracture / doubt / no fracture), the calibrated probability
on a bar with both operating points, what they mean, and the body region on its own line."""

from __future__ import annotations

import html

import streamlit as st

from dashboard import ui
from db import browse
from db.models import (
    Image,
    ImageStatus,
    Prediction,
    Verdict,
)


def region_line(prediction: Prediction) -> str | None:
    """ "hand, 87%" for a two-head model's prediction; None otherwise."""
    if prediction.region is None:
        return None
    if prediction.region_probability is None:
        return prediction.region
    return f"{prediction.region}, {prediction.region_probability:.0%}"


def verdict_of(prediction: Prediction) -> str:
    """The prediction's three-way answer; a row without one answers as its label implies."""
    if prediction.verdict in ui.VERDICT_TEXT:
        return str(prediction.verdict)
    return Verdict.FRACTURE if prediction.label == browse.POSITIVE_LABEL else Verdict.NO_FRACTURE


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
                f'<div class="fx-label">{ui.STATUS_TEXT.get(image.status, image.status)}</div>'
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
        f"Analysed {html.escape(ui.local_time(prediction.created_at))}",
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
        f'<div class="fx-card {ui.VERDICT_CLASS.get(verdict, "fail")}">'
        f'<div class="fx-label">{html.escape(ui.verdict_text(verdict))}</div>'
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
