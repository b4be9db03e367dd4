"""Localisation metrics on hand-made boxes whose answers were worked out by hand."""

from __future__ import annotations

import pytest

from model.annotations import Outlines
from model.localisation import ImageBoxes, report, summarise, truth_boxes

# Four images, worked out by hand (boxes are x, y, width, height[, score]):
# 1 fractured, outline T1 found by a 0.9 box (whose centre is inside T1); one false box at 0.6.
# 2 fractured, outlines T2 (never found) and T3 (found at 0.4); its top box (0.7) is false.
# 3 and 4 not fractured: false boxes at 0.8, 0.3 and 0.5.
# False scores, best first: 0.8 0.7 0.6 0.5 0.3; outlines found at 0.9 (T1), 0.4 (T3), never (T2).
IMAGES = [
    ImageBoxes(
        predicted=[(0, 0, 10, 10, 0.9), (50, 50, 10, 10, 0.6)],
        truth=[(0, 0, 10, 10)],
        fractured=True,
        region="hand",
    ),
    ImageBoxes(
        predicted=[(200, 200, 5, 5, 0.7), (100, 100, 10, 10, 0.4)],
        truth=[(0, 0, 10, 10), (100, 100, 10, 10)],
        fractured=True,
        region="leg",
    ),
    ImageBoxes(
        predicted=[(0, 0, 5, 5, 0.8), (20, 20, 5, 5, 0.3)], truth=[], fractured=False, region="hand"
    ),
    ImageBoxes(predicted=[(0, 0, 5, 5, 0.5)], truth=[], fractured=False, region="leg"),
]


def recalls(result: dict) -> dict[float, float]:
    return {p["false_boxes_per_image"]: p["recall"] for p in result["froc"]}


def test_pointing_counts_the_top_box_centre_inside_an_outline() -> None:
    # Image 1's top box centre (5, 5) lies in T1; image 2's top box centre (202.5, 202.5) in none.
    pointing = summarise(IMAGES, bootstrap=0)["pointing_accuracy"]
    assert pointing["value"] == pytest.approx(0.5)
    assert pointing["n"] == 2


def test_a_lower_box_inside_the_outline_does_not_rescue_pointing() -> None:
    miss = ImageBoxes(
        predicted=[(50, 50, 10, 10, 0.8), (1, 1, 8, 8, 0.3)], truth=[(0, 0, 10, 10)], fractured=True
    )
    assert summarise([miss], bootstrap=0)["pointing_accuracy"]["value"] == 0.0


def test_a_top_box_centre_on_the_outline_edge_counts_as_inside() -> None:
    # Centre (10, 5) lies on T's right edge.
    edge = ImageBoxes(predicted=[(5, 0, 10, 10, 0.9)], truth=[(0, 0, 10, 10)], fractured=True)
    assert summarise([edge], bootstrap=0)["pointing_accuracy"]["value"] == 1.0


def test_froc_recall_at_each_false_box_rate() -> None:
    # 4 images: 0.5 FP/img allows 2 false boxes (0.8, 0.7); the third, at 0.6, sets the cut, so
    # only T1 (0.9) of 3 outlines is found. 1 FP/img allows 4 (down to 0.5): T1 and T3 (0.4).
    # 2 FP/img allows all 5: still T1 and T3, since nothing ever finds T2.
    result = summarise(IMAGES, bootstrap=0)
    assert recalls(result) == pytest.approx({0.5: 1 / 3, 1.0: 2 / 3, 2.0: 2 / 3})
    assert result["n_images"] == 4 and result["n_outlines"] == 3


def test_an_outline_found_only_at_the_score_of_a_false_box_past_the_limit_is_missed() -> None:
    # One image; 0.5 FP/img allows none. The false box ties with the hit at 0.6: both are drawn
    # or neither is, so the outline counts as missed at 0.5 and found at 1 FP/img.
    tied = ImageBoxes(
        predicted=[(0, 0, 10, 10, 0.6), (50, 50, 10, 10, 0.6)],
        truth=[(0, 0, 10, 10)],
        fractured=True,
    )
    assert recalls(summarise([tied], bootstrap=0)) == pytest.approx({0.5: 0.0, 1.0: 1.0, 2.0: 1.0})


def test_iou_of_exactly_the_threshold_is_a_hit_and_just_below_is_a_false_box() -> None:
    # 10×2.5 inside a 10×10 outline: IoU 25/100 = 0.25. 10×2.4: IoU 0.24, a false box.
    outline = [(0.0, 0.0, 10.0, 10.0)]
    at = ImageBoxes(predicted=[(0, 0, 10, 2.5, 0.9)], truth=outline, fractured=True)
    below = ImageBoxes(predicted=[(0, 0, 10, 2.4, 0.9)], truth=outline, fractured=True)
    assert recalls(summarise([at], bootstrap=0))[0.5] == 1.0
    assert recalls(summarise([below], bootstrap=0)) == {0.5: 0.0, 1.0: 0.0, 2.0: 0.0}


def test_a_second_box_on_a_found_outline_is_not_a_false_box() -> None:
    # With no false box, 0.5 FP/img on one image is met and the outline is found.
    double = ImageBoxes(
        predicted=[(0, 0, 10, 10, 0.9), (1, 1, 9, 9, 0.8)], truth=[(0, 0, 10, 10)], fractured=True
    )
    assert recalls(summarise([double], bootstrap=0))[0.5] == 1.0


def test_fractured_images_without_outlines_are_left_out() -> None:
    unjudged = ImageBoxes(predicted=[(0, 0, 5, 5, 0.99)], truth=[], fractured=True)
    result = summarise([*IMAGES, unjudged], bootstrap=0)
    assert result["n_fractured_without_outlines"] == 1
    assert result["n_images"] == 4
    assert recalls(result) == pytest.approx({0.5: 1 / 3, 1.0: 2 / 3, 2.0: 2 / 3})


def test_bootstrap_intervals_bracket_the_estimates() -> None:
    result = summarise(IMAGES * 5, bootstrap=300)
    pointing = result["pointing_accuracy"]
    assert 0.0 <= pointing["ci_low"] <= pointing["value"] <= pointing["ci_high"] <= 1.0
    for point in result["froc"]:
        assert 0.0 <= point["ci_low"] <= point["recall"] <= point["ci_high"] <= 1.0


def test_report_breaks_down_by_region_and_flags_small_ones() -> None:
    result = report(IMAGES, bootstrap=50)
    assert set(result["per_region"]) == {"hand", "leg"}
    hand = result["per_region"]["hand"]
    # Hand: images 1 and 3, one outline found at 0.9 before any false box.
    assert hand["pointing_accuracy"]["value"] == 1.0
    assert recalls(hand)[0.5] == 1.0
    assert "too few" in hand["note"]
    assert result["iou_threshold"] == 0.25


def test_outline_boxes_are_scaled_to_the_decoded_image() -> None:
    outlines = Outlines(width=100, height=200, boxes=((10.0, 20.0, 30.0, 40.0),))
    assert truth_boxes(outlines, (50, 100)) == [(5.0, 10.0, 15.0, 20.0)]
    assert truth_boxes(None, (50, 100)) == []
