"""Label bridging: the queue's balance as a property, across steps and across save/restore."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dfmscd.synthesis.label_bridge import IIDLabels, LabelBridge, allocate_deficit, make_label_source


def _within_one(counts: torch.Tensor) -> bool:
    return int(counts.max() - counts.min()) <= 1


@settings(max_examples=60, deadline=None)
@given(
    num_classes=st.integers(2, 12),
    takes=st.lists(st.integers(1, 40), min_size=1, max_size=12),
    seed=st.integers(0, 2**31),
)
def test_queue_output_is_balanced_within_one_after_every_step(num_classes, takes, seed):
    bridge = LabelBridge(num_classes, correction=0.0, seed=seed)
    total = torch.zeros(num_classes, dtype=torch.int64)
    for n in takes:
        labels = bridge.next(n)
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert 0 <= int(labels.min()) and int(labels.max()) < num_classes
        total += torch.bincount(labels, minlength=num_classes)
        assert _within_one(total)
        assert torch.equal(total, bridge.taken)


@settings(max_examples=40, deadline=None)
@given(
    num_classes=st.integers(2, 10),
    before=st.lists(st.integers(1, 30), min_size=1, max_size=6),
    after=st.lists(st.integers(1, 30), min_size=1, max_size=6),
    seed=st.integers(0, 2**31),
)
def test_balance_and_stream_survive_a_checkpoint(num_classes, before, after, seed):
    straight = LabelBridge(num_classes, seed=seed)
    interrupted = LabelBridge(num_classes, seed=seed)
    for n in before:
        assert torch.equal(straight.next(n), interrupted.next(n))
    state = interrupted.state_dict()
    resumed = LabelBridge(num_classes, seed=seed + 1)  # a different seed: the state must win
    resumed.load_state_dict(state)
    total = resumed.taken.clone()
    for n in after:
        got = resumed.next(n)
        assert torch.equal(got, straight.next(n))
        total += torch.bincount(got, minlength=num_classes)
        assert _within_one(total)


def test_allocate_deficit_is_proportional_to_distance_from_the_best_class():
    assert allocate_deficit([10, 10, 10], 6) == [0, 0, 0]  # balanced: nothing to correct
    assert allocate_deficit([10, 4, 7], 9) == [0, 6, 3]  # deficits 0, 6, 3
    assert allocate_deficit([5, 0, 0], 3) == [0, 2, 1]  # ties: remainder to the lower index
    assert sum(allocate_deficit([9, 1, 2, 3], 7)) == 7


def test_iid_labels_are_the_unbalanced_baseline_and_reproducible():
    source = make_label_source(5, bridging=False, correction=0.5, seed=3)
    assert isinstance(source, IIDLabels)
    a = source.next(1000)
    again = IIDLabels(5, seed=3).next(1000)
    assert torch.equal(a, again)
    counts = torch.bincount(a, minlength=5)
    assert counts.max() - counts.min() > 1  # i.i.d. draws are not balanced within one
    assert isinstance(make_label_source(5, True, 0.5, 3), LabelBridge)


def test_class_weights_by_hand():
    from dfmscd.synthesis.label_bridge import class_weights

    # h = [10, 4, 7]: deficits 0, 6, 3 (sum 9); a = 0.5, C = 3: w = 0.5 + 1.5 * d / 9
    w = class_weights([10, 4, 7], 0.5)
    assert torch.allclose(w, torch.tensor([0.5, 1.5, 1.0]))
    assert float(w.mean()) == pytest.approx(1.0)  # the class loss keeps its scale
    assert torch.equal(class_weights([5, 5, 5], 0.5), torch.ones(3))  # balanced pool: no change
    assert torch.equal(class_weights([10, 4, 7], 0.0), torch.ones(3))


def test_correction_never_unbalances_the_requests():
    bridge = LabelBridge(4, correction=0.5, seed=0)
    for _ in range(5):
        labels = bridge.next(6, recognised=[100, 100, 100, 0])
        assert labels.numel() == 6
    assert _within_one(bridge.taken) and int(bridge.taken.sum()) == 30
    w = bridge.loss_weights([100, 100, 100, 0])
    assert w is not None and int(w.argmax()) == 3
    assert bridge.loss_weights([0, 0, 0, 0]) is None  # empty pool: unweighted
    assert IIDLabels(4).loss_weights([100, 0, 0, 0]) is None  # the baseline has no correction
