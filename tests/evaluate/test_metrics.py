"""Preference metrics on ties, NaN losses and no pairs, against hand-computed values."""

import pytest

from unitune.evaluate.scoring import preference_metrics

NAN = float("nan")


def test_lower_chosen_loss_is_correct_and_a_tie_is_not():
    """Hand-computed: pair 0 right (1 < 3), pair 1 a tie (documented: ties count as wrong), pair 2 wrong."""
    m = preference_metrics([1.0, 2.0, 4.0], [3.0, 2.0, 1.0])
    assert (m["preference_correct"], m["preference_total"]) == (1, 3)
    assert m["preference_accuracy"] == pytest.approx(1 / 3)
    assert (m["avg_chosen_loss"], m["avg_rejected_loss"], m["loss_margin"]) == pytest.approx((7 / 3, 2.0, -1 / 3))
    assert preference_metrics([0.5], [0.5])["preference_accuracy"] == 0.0


@pytest.mark.parametrize("chosen,rejected", [([NAN, 1.0], [2.0, 3.0]), ([1.0, 1.0], [NAN, 3.0]),
                                             ([NAN, 1.0], [NAN, 3.0])])
def test_nan_pair_is_never_correct_and_accuracy_stays_a_number(chosen, rejected):
    m = preference_metrics(chosen, rejected)
    assert (m["preference_correct"], m["preference_total"], m["preference_accuracy"]) == (1, 2, 0.5)


def test_nan_pair_does_not_poison_the_average_losses():
    m = preference_metrics([NAN, 1.0], [2.0, 3.0])  # averaged over the pairs both of whose losses are numbers
    assert (m["avg_chosen_loss"], m["avg_rejected_loss"], m["loss_margin"]) == (1.0, 3.0, 2.0)


def test_no_pairs():
    m = preference_metrics([], [])
    assert (m["preference_correct"], m["preference_total"]) == (0, 0) and all(m[k] is None for k in (
        "preference_accuracy", "avg_chosen_loss", "avg_rejected_loss", "loss_margin"))
