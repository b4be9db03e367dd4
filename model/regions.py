"""Body regions: the vocabulary of the region head and how DICOM body parts map onto it.

FracAtlas labels each radiograph hand, leg, hip, shoulder or mixed (several regions in one
image). A two-head checkpoint stores its own region names; `REGIONS` is the default order.
"""

from __future__ import annotations

REGIONS: tuple[str, ...] = ("hand", "hip", "leg", "mixed", "shoulder")

# DICOM BodyPartExamined (0018,0015) defined terms → the region the model would call it.
# Only unambiguous terms are mapped; anything else (ELBOW, ARM, CHEST, ...) is not compared,
# so a disagreement flag always means two clear, different answers.
_BODY_PART_REGION: dict[str, str] = {
    **dict.fromkeys(("HAND", "FINGER", "THUMB", "WRIST", "CARPUS", "METACARPUS"), "hand"),
    **dict.fromkeys(
        (
            "LEG",
            "LOWER LEG",
            "LOWEXM",
            "LOWER EXTREMITY",
            "KNEE",
            "ANKLE",
            "FOOT",
            "TOE",
            "HEEL",
            "CALCANEUS",
            "TIBIA",
            "FIBULA",
            "FEMUR",
            "THIGH",
            "PATELLA",
        ),
        "leg",
    ),
    **dict.fromkeys(("HIP", "PELVIS", "SACROILIAC JOINT"), "hip"),
    **dict.fromkeys(("SHOULDER", "CLAVICLE", "SCAPULA", "ACJOINT", "HUMERUS"), "shoulder"),
}


def region_of_body_part(body_part: str | None) -> str | None:
    """The region a DICOM BodyPartExamined value names, or None when it names none clearly."""
    if not body_part:
        return None
    key = " ".join(body_part.replace("_", " ").upper().split())
    return _BODY_PART_REGION.get(key)


def disagrees(body_part: str | None, predicted_region: str | None) -> bool | None:
    """True when the file's body part and the predicted region are both clear and differ;
    None when either is missing or not comparable (e.g. a prediction of `mixed`)."""
    stated = region_of_body_part(body_part)
    if stated is None or predicted_region is None or predicted_region == "mixed":
        return None
    return stated != predicted_region
