"""Label bridging: the queue's balance as a property, across steps and across save/restore."""

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


def test_correction_stream_requests_under_recognised_classes():
    bridge = LabelBridge(4, correction=0.5, seed=0)
    labels = bridge.next(8, recognised=[100, 100, 100, 0])
    # half the batch (4) comes from the queue, the other half goes to class 3
    assert int((labels == 3).sum()) >= 4
    assert torch.equal(bridge.taken.sum(), torch.tensor(4))
    assert _within_one(bridge.taken)
    # nothing recognised yet (empty pool): the whole batch comes from the queue
    bridge2 = LabelBridge(4, correction=0.5, seed=0)
    bridge2.next(8, recognised=[0, 0, 0, 0])
    assert int(bridge2.taken.sum()) == 8


def test_iid_labels_are_the_unbalanced_baseline_and_reproducible():
    source = make_label_source(5, bridging=False, correction=0.5, seed=3)
    assert isinstance(source, IIDLabels)
    a = source.next(1000)
    again = IIDLabels(5, seed=3).next(1000)
    assert torch.equal(a, again)
    counts = torch.bincount(a, minlength=5)
    assert counts.max() - counts.min() > 1  # i.i.d. draws are not balanced within one
    assert isinstance(make_label_source(5, True, 0.5, 3), LabelBridge)
