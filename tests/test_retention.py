"""The retention check's arithmetic: which weights it keeps, and what it says."""

import pytest
import torch

from napari_unet.core.bundle import network_state
from napari_unet.core.retention import PULL_BACK_SHARES, RetentionCheck, blended_state, pull_back


def _pair():
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    tuned = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    tuned[1].num_batches_tracked += 7
    return base, tuned


def _distance_score(base, tuned):
    """1 minus how far a network's floating-point weights lie from ``base``'s, as a share of
    ``tuned``'s distance: the base scores 1, the tuned weights 0, a blend of share s 1 - s."""
    reference = network_state(base)

    def gap(network):
        state = network_state(network)
        return sum(
            float((state[k] - reference[k]).abs().sum())
            for k in reference
            if reference[k].is_floating_point()
        )

    full = gap(tuned)
    return lambda network: 1.0 - gap(network) / full


def test_blended_weights_lie_between_the_versions():
    base, tuned = _pair()
    a, b = network_state(base), network_state(tuned)
    half = blended_state(a, b, 0.5)
    assert torch.allclose(half["0.weight"], (a["0.weight"] + b["0.weight"]) / 2)
    assert torch.equal(blended_state(a, b, 0.0)["0.weight"], a["0.weight"])
    assert torch.equal(blended_state(a, b, 1.0)["0.weight"], b["0.weight"])
    assert int(half["1.num_batches_tracked"]) == 7  # counters come from the tuned version


@pytest.mark.parametrize(
    ("tolerance", "share"),
    [(1.0, 1.0), (0.8, 0.75), (0.6, 0.5), (0.3, 0.25), (0.1, 0.0), (0.0, 0.0)],
)
def test_the_first_share_within_the_tolerance_is_kept(tolerance, share):
    base, tuned = _pair()
    tuned_state = network_state(tuned)
    check = pull_back(tuned, base, _distance_score(base, tuned), tolerance, 3, "AP@0.5")
    assert check.base_score == pytest.approx(1.0) and check.tuned_score == pytest.approx(0.0)
    assert check.share == share
    assert check.kept_score == pytest.approx(1.0 - share)
    kept = blended_state(network_state(base), tuned_state, share)
    for key, value in network_state(tuned).items():
        assert torch.allclose(value.float(), kept[key].float(), atol=1e-6), key
    assert share in (1.0, *PULL_BACK_SHARES)


def test_the_panel_says_what_was_kept():
    def check(share, kept):
        return RetentionCheck("AP@0.5", 24, 0.75, 0.63, share, kept, 0.02)

    assert check(1.0, 0.63).describe().startswith("Kept what it knew")
    assert "moved back to 50% of their change (0.74)" in check(0.5, 0.74).describe()
    assert "keeps the previous weights" in check(0.0, 0.75).describe()
    assert "0.75 before, 0.63 after fine-tuning" in check(0.5, 0.74).describe()
