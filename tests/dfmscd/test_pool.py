"""The bounded uint8 pool: capacity, eviction order, reservoir sampling, checkpoint state."""

import pytest
import torch

from dfmscd.synthesis.pool import ImagePool

SHAPE = (1, 2, 2)


def _batch(start: int, n: int):
    """Images whose pixels encode their sequence number (mod 256), labels = sequence number."""
    ids = torch.arange(start, start + n)
    images = (ids % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, *SHAPE).clone()
    return images, ids % 3, ids % 3


def test_fifo_keeps_the_newest_images_and_never_exceeds_capacity():
    pool = ImagePool(10, SHAPE, num_classes=3, eviction="fifo")
    for start in range(0, 37, 4):
        pool.add(*_batch(start, 4))
        assert len(pool) <= 10 and pool.images.shape[0] <= 10
    assert len(pool) == 10 and pool.seen == 40
    kept = sorted(pool.images[:, 0, 0, 0].tolist())
    assert kept == list(range(30, 40))
    assert pool.images.dtype == torch.uint8


def test_fifo_batch_larger_than_capacity_keeps_its_tail():
    pool = ImagePool(5, SHAPE, num_classes=3)
    pool.add(*_batch(0, 12))
    assert sorted(pool.images[:, 0, 0, 0].tolist()) == list(range(7, 12))


def test_reservoir_keeps_a_sample_of_the_whole_stream():
    pool = ImagePool(50, SHAPE, num_classes=3, eviction="reservoir", seed=1)
    for start in range(0, 1000, 20):
        pool.add(*_batch(start, 20))
        assert len(pool) <= 50
    ids = pool.labels  # labels are id % 3; use the pixel to recover ids mod 256
    assert len(pool) == 50 and pool.seen == 1000 and ids.shape[0] == 50
    # deterministic given the seed
    again = ImagePool(50, SHAPE, num_classes=3, eviction="reservoir", seed=1)
    for start in range(0, 1000, 20):
        again.add(*_batch(start, 20))
    assert torch.equal(pool.images, again.images)


def test_reservoir_is_uniform_over_the_stream():
    # Over many seeds, an early and a late item are kept about equally often (cap/seen each).
    early = late = 0
    trials = 300
    for seed in range(trials):
        pool = ImagePool(10, (1, 1, 1), num_classes=2, eviction="reservoir", seed=seed)
        ids = torch.arange(100)
        pool.add(ids.to(torch.uint8).view(-1, 1, 1, 1), ids % 2, ids % 2)
        kept = set(pool.images.flatten().tolist())
        early += 3 in kept
        late += 97 in kept
    # expected 0.1 * 300 = 30 each; a fifo would keep 97 always and 3 never
    assert 12 <= early <= 55 and 12 <= late <= 55


def test_histograms_count_pool_contents():
    pool = ImagePool(100, SHAPE, num_classes=4)
    images = torch.zeros(6, *SHAPE, dtype=torch.uint8)
    pool.add(images, torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([3, 3, 3, 3, 1, 0]))
    assert pool.histogram("labels") == [2, 1, 3, 0]
    assert pool.histogram("teacher_argmax") == [1, 1, 0, 4]


def test_pool_refuses_non_uint8_or_misshaped_images():
    pool = ImagePool(10, SHAPE, num_classes=3)
    with pytest.raises(ValueError):
        pool.add(torch.zeros(2, *SHAPE), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError):
        pool.add(torch.zeros(2, 3, 2, 2, dtype=torch.uint8), torch.zeros(2), torch.zeros(2))


def test_state_round_trip_continues_identically():
    a = ImagePool(30, SHAPE, num_classes=3, eviction="reservoir", seed=7)
    for start in range(0, 60, 10):
        a.add(*_batch(start, 10))
    b = ImagePool(30, SHAPE, num_classes=3, eviction="reservoir", seed=99)
    b.load_state_dict(a.state_dict())
    for start in range(60, 120, 10):
        a.add(*_batch(start, 10))
        b.add(*_batch(start, 10))
    assert torch.equal(a.images[: len(a)], b.images[: len(b)])
    assert torch.equal(a.sample_indices(20), b.sample_indices(20))
    with pytest.raises(ValueError):
        ImagePool(10, SHAPE, num_classes=3).load_state_dict(a.state_dict())  # capacity differs


def test_sampling_an_empty_pool_is_an_error():
    with pytest.raises(RuntimeError):
        ImagePool(10, SHAPE, num_classes=3).sample_indices(4)


def test_balanced_weights_give_every_teacher_class_the_same_mass():
    pool = ImagePool(16, SHAPE, num_classes=3)
    images = torch.zeros(4, *SHAPE, dtype=torch.uint8)
    # teacher classes 0, 1, 1, 1 (class 2 absent): weights 1, 1/3, 1/3, 1/3
    pool.add(images, torch.tensor([0, 0, 0, 0]), torch.tensor([0, 1, 1, 1]))
    w = pool.balanced_weights()
    assert torch.allclose(w, torch.tensor([1.0, 1 / 3, 1 / 3, 1 / 3], dtype=torch.float64))
    idx = pool.sample_balanced(4000)
    share_class0 = float((idx == 0).double().mean())
    assert abs(share_class0 - 0.5) < 0.04  # half the draws from the single class-0 image


def test_balanced_sampling_is_reproducible_across_a_checkpoint():
    a = ImagePool(32, SHAPE, num_classes=3, seed=4)
    a.add(*_batch(0, 20))
    a.sample_balanced(7)
    b = ImagePool(32, SHAPE, num_classes=3, seed=99)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.sample_balanced(9), b.sample_balanced(9))
    assert torch.equal(a.gather(torch.tensor([3, 1])), a.images[[3, 1]])
