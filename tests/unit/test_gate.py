"""The gate's rules (worker/pipeline/gate.py) and its image score (worker/model/gate.py), on
made-up attributes and features: no model, no data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from worker.config import GateSettings
from worker.decode import DecodedImage, DicomFacts
from worker.model.gate import ImageGate, energy, fit_gate
from worker.pipeline.gate import Gate


def dicom(
    modality: str | None = "CR", body_part: str | None = "CHEST", view: str | None = "PA"
) -> DecodedImage:
    facts = DicomFacts(None, None, None, None, modality, None, None, body_part=body_part, view_position=view)
    return DecodedImage(np.zeros((2, 2), np.uint8), "DICOM", 2, 2, facts)


GATE = Gate.from_settings(GateSettings())


@pytest.mark.parametrize(
    ("decoded", "reason"),
    [
        (dicom(), None),
        (dicom("DX", "chest", "ap"), None),  # case does not matter
        (dicom("MR"), "Modality MR is not screened"),
        (dicom("CT", "CHEST"), "Modality CT is not screened"),
        (dicom("CR", "ABDOMEN"), "BodyPartExamined ABDOMEN is not screened"),
        (dicom("CR", "CHEST", "LL"), "ViewPosition LL is not screened"),
        (dicom("CR", None, None), None),  # many exports drop them: missing passes by default
        (DecodedImage(np.zeros((2, 2), np.uint8), "PNG", 2, 2, None), None),  # no attributes at all
    ],
)
def test_dicom_attributes_decide_before_inference(decoded, reason):
    assert GATE is not None and GATE.before(decoded) == reason


def test_missing_attributes_can_be_refused_and_the_gate_turned_off():
    strict = Gate.from_settings(dataclasses.replace(GateSettings(), missing_passes=False))
    assert strict is not None
    assert strict.before(dicom("CR", None)) == (
        "no BodyPartExamined: a file without it is not screened ([gate] missing_passes)"
    )
    assert strict.before(dicom(None)).startswith("no Modality")
    anything = Gate.from_settings(dataclasses.replace(GateSettings(), modalities=(), body_parts=()))
    assert anything is not None and anything.before(dicom("MR", "KNEE")) is None
    assert Gate.from_settings(dataclasses.replace(GateSettings(), enabled=False)) is None


def clusters(
    rng: np.random.Generator, n: int, centre: float = 0.0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Made-up features of two layers: two classes, each a Gaussian cloud."""
    labels = rng.integers(0, 2, n)
    means = np.array([[centre + 2.0] * 8, [centre - 2.0] * 8])
    return {"penultimate": means[labels] + rng.normal(size=(n, 8)), "0.6": rng.normal(size=(n, 4))}, labels


def test_the_image_gate_refuses_the_set_share_of_its_own_population_and_far_images():
    rng = np.random.default_rng(0)
    train, labels = clusters(rng, 4000)
    held_out, _ = clusters(rng, 2000)
    gate = fit_gate(train, labels, held_out, refuse_share=0.01)
    assert gate.layer_names == ("penultimate", "0.6")
    fresh, _ = clusters(rng, 4000)
    refused = np.mean(gate.scores(fresh) > gate.limit)
    assert 0.005 < refused < 0.02  # the limit holds on films it never saw
    far, _ = clusters(rng, 200, centre=10.0)
    assert np.mean(gate.scores(far) > gate.limit) > 0.99
    typical = np.median(gate.layers[0].scores(fresh["penultimate"]))
    assert 0.5 < typical < 1.5  # squared distance per feature: about 1 for its own population
    odd = dict(fresh, **{"0.6": fresh["0.6"] + 5.0})  # unlike the training films in one layer only
    assert np.mean(gate.scores(odd) > gate.limit) > 0.99
    # stored with the model and read back to the same scores
    again = ImageGate.from_metadata(gate.to_metadata())
    assert again is not None and np.allclose(again.scores(far), gate.scores(far), rtol=1e-4)
    assert ImageGate.from_metadata(None) is None and ImageGate.from_metadata({"kind": "other"}) is None


def test_the_gate_refuses_after_inference_only_above_the_limit():
    rng = np.random.default_rng(1)
    train, labels = clusters(rng, 1000)
    image = fit_gate(train, labels, clusters(rng, 500)[0])
    gate = Gate(image=image)
    assert gate.after(image.limit * 0.9) is None and gate.after(None) is None
    assert gate.after(image.limit * 3) == (
        f"unlike the films this model was trained on: distance {image.limit * 3:.2f} from them, "
        f"over the limit {image.limit:.2f}"
    )
    assert Gate().image_scores(train) is None  # a model without an image gate scores nothing


def test_energy_is_higher_for_flat_logits():
    assert energy(np.array([[0.0, 0.0]]))[0] > energy(np.array([[8.0, -8.0]]))[0]


def test_summaries_count_the_image_gates_refusals_as_one_kind_whatever_each_score():
    from worker.db.report import by_reason_kind
    from worker.outcome import Outcome
    from worker.pipeline.counts import Counts

    counts = Counts()
    for reason in (
        "unlike the films this model was trained on: distance 1.24 from them, over the limit 1.00",
        "unlike the films this model was trained on: distance 13.50 from them, over the limit 1.00",
        "Modality MR is not screened",
    ):
        counts.add(Outcome.OUT_OF_SCOPE, reason=reason)
    assert counts.out_of_scope == {
        "unlike the films this model was trained on: distance over the limit 1.00": 2,
        "Modality MR is not screened": 1,
    }
    rows = [
        ("unlike the films this model was trained on: distance 1.24 from them, over the limit 1.00", 1, 5),
        ("Modality CT is not screened", 1, 9),
    ]
    rows += [("unlike the films this model knows: score 2.50 > 1.00", 2, 7)]  # an earlier release's words
    assert by_reason_kind(rows) == [
        ("unlike the films this model was trained on: distance over the limit 1.00", 3, 7),
        ("Modality CT is not screened", 1, 9),
    ]
