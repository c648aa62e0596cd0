"""Data: seeded batching, padding, restorable positions, sharding onto devices."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from funcnet.train.data import (
    ArrayDataset,
    Batches,
    GeneratorBatches,
    Position,
    host_slice,
    make_batches,
    shard_batch,
)


def ids_dataset(n: int) -> ArrayDataset:
    """Example ``i`` carries its own index, so batches show which examples they hold."""
    return ArrayDataset(idx=np.arange(n, dtype=np.int32), x=np.arange(2.0 * n, dtype=np.float32).reshape(n, 2))


def take(iterator, count: int) -> list[dict]:
    return [next(iterator) for _ in range(count)]


def assert_batches_equal(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], strict=True)  # bit-exact: same rows, same dtype


# ---- ordering -----------------------------------------------------------------------------------


def test_shuffle_is_a_permutation_fixed_by_seed_and_epoch():
    n = 50
    orders = {(seed, epoch): Batches(ids_dataset(n), 5, seed=seed).order(epoch) for seed in (0, 1) for epoch in (0, 1)}
    for (seed, epoch), order in orders.items():
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
        # The documented contract: the order is a function of (seed, epoch) only, from a fresh instance.
        np.testing.assert_array_equal(order, Batches(ids_dataset(n), 10, seed=seed).order(epoch))
        np.testing.assert_array_equal(order, np.random.default_rng([seed, epoch]).permutation(n))
    # 50! orders: two equal ones by chance are impossible in practice.
    assert not np.array_equal(orders[0, 0], orders[0, 1]), "epochs must differ"
    assert not np.array_equal(orders[0, 0], orders[1, 0]), "seeds must differ"
    assert not np.array_equal(orders[0, 0], np.arange(n)), "shuffle is on by default"
    np.testing.assert_array_equal(Batches(ids_dataset(n), 5, shuffle=False).order(3), np.arange(n))


def test_an_epoch_holds_every_example_once_and_pads_the_last_batch_with_masked_repeats():
    n, size = 23, 5
    batches = Batches(ids_dataset(n), size, seed=4)
    epoch = list(batches.epoch(2))
    assert batches.steps_per_epoch == len(epoch) == 5
    for batch in epoch:
        assert batch["mask"].dtype == np.float32
        assert {k: v.shape[0] for k, v in batch.items()} == {"idx": size, "x": size, "mask": size}
        np.testing.assert_array_equal(batch["x"], batch["idx"][:, None] * 2.0 + np.arange(2.0))  # rows stay whole
    real = np.concatenate([b["idx"][b["mask"] == 1] for b in epoch])
    np.testing.assert_array_equal(real, batches.order(2))  # in order, none dropped or repeated
    last = epoch[-1]
    np.testing.assert_array_equal(last["mask"], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(last["idx"][3:], last["idx"][:2])  # padding repeats real examples
    assert all(b["mask"].all() for b in epoch[:-1])


def test_drop_remainder_drops_the_last_partial_batch():
    batches = Batches(ids_dataset(23), 5, seed=4, drop_remainder=True)
    epoch = list(batches.epoch(0))
    assert batches.steps_per_epoch == len(epoch) == 4
    assert all(b["mask"].all() for b in epoch)
    np.testing.assert_array_equal(np.concatenate([b["idx"] for b in epoch]), batches.order(0)[:20])


def test_a_dataset_smaller_than_one_batch_gives_one_padded_batch():
    (batch,) = Batches(ids_dataset(3), 8, shuffle=False).epoch(0)
    np.testing.assert_array_equal(batch["idx"], [0, 1, 2, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(batch["mask"], [1, 1, 1, 0, 0, 0, 0, 0])


def test_a_mask_from_the_dataset_is_combined_with_the_padding_mask():
    data = ArrayDataset(x=np.arange(3.0), mask=np.array([1.0, 0.0, 1.0]))
    (batch,) = Batches(data, 4, shuffle=False).epoch(0)
    np.testing.assert_array_equal(batch["mask"], np.array([1, 0, 1, 0], np.float32), strict=True)


# ---- errors -------------------------------------------------------------------------------------


def test_batch_size_must_be_a_multiple_of_the_device_count():
    with pytest.raises(
        ValueError, match=r"expected a multiple of 8 .* got 30\. Fix: pick a multiple of 8, e.g. 24 or 32"
    ):
        Batches(ids_dataset(100), 30, multiple_of=8)
    assert Batches(ids_dataset(100), 32, multiple_of=8).steps_per_epoch == 4


def test_array_dataset_names_the_arrays_of_different_lengths():
    with pytest.raises(ValueError, match=r"share their first .* got lengths x: 10, y: 9"):
        ArrayDataset(x=np.zeros((10, 2)), y=np.zeros(9))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Batches(ids_dataset(3), 4, drop_remainder=True), "fewer than batch_size 4"),
        (lambda: Batches(ids_dataset(0), 4), "dataset is empty"),
        (lambda: Batches(ids_dataset(3), 0), "batch_size: expected an int >= 1, got 0"),
        (lambda: Batches(ids_dataset(3), 2, seed=-1), "seed: expected an int >= 0, got -1"),
        (lambda: Batches(ids_dataset(10), 4).iterate(Position(0, 4)), "position.index: expected at most 3"),
        (lambda: Batches(ids_dataset(10), 4).iterate({"epoch": -1, "index": 0}), "position.epoch: expected an int"),
        (lambda: ArrayDataset(x=np.float32(1.0)), "got lengths x: scalar"),
    ],
)
def test_bad_arguments_are_rejected_with_the_argument_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_dataset_returning_the_wrong_number_of_rows_is_rejected():
    class Short:
        def __len__(self):
            return 10

        def __getitem__(self, indices):
            return {"x": np.zeros(len(indices) - 1)}

    with pytest.raises(ValueError, match=r"dataset\[indices\]: expected every array to have leading axis 4"):
        next(Batches(Short(), 4).iterate())


# ---- restorable position ------------------------------------------------------------------------


def test_position_marks_the_next_batch_and_moves_to_the_next_epoch_after_the_last():
    it = Batches(ids_dataset(10), 4).iterate()
    assert it.position == Position(0, 0)
    positions = []
    for _ in range(4):
        next(it)
        positions.append(it.position)
    assert positions == [Position(0, 1), Position(0, 2), Position(1, 0), Position(1, 1)]


@pytest.mark.parametrize("stop", range(8))
def test_resuming_from_a_saved_position_equals_the_uninterrupted_iteration(stop):
    # 10 examples in batches of 4: 3 batches per epoch, so the 8 stops include both epoch boundaries.
    uninterrupted = take(Batches(ids_dataset(10), 4, seed=7).iterate(), 8)
    first = Batches(ids_dataset(10), 4, seed=7).iterate()
    got = take(first, stop)
    saved = json.loads(json.dumps(first.position._asdict()))  # as a checkpoint stores it
    resumed = Batches(ids_dataset(10), 4, seed=7).iterate(Position(**saved))  # a fresh process, as it were
    got += take(resumed, 8 - stop)
    assert_batches_equal(got, uninterrupted)


def epochs_of_varying_length(epoch: int):
    """An iterable dataset: epoch ``e`` has ``2 + e % 2`` batches whose values encode (epoch, batch)."""
    for i in range(2 + epoch % 2):
        yield {"x": np.full((2, 1), 10.0 * epoch + i, np.float32)}


@pytest.mark.parametrize("stop", range(7))
def test_generator_batches_resume_like_batches(stop):
    uninterrupted = take(GeneratorBatches(epochs_of_varying_length).iterate(), 7)
    assert [float(b["x"][0, 0]) for b in uninterrupted] == [0, 1, 10, 11, 12, 20, 21]
    first = GeneratorBatches(epochs_of_varying_length).iterate()
    got = take(first, stop)
    resumed = GeneratorBatches(epochs_of_varying_length).iterate(json.loads(json.dumps(first.position._asdict())))
    assert_batches_equal(got + take(resumed, 7 - stop), uninterrupted)


def test_generator_batches_check_their_batches():
    batches = GeneratorBatches(epochs_of_varying_length)
    np.testing.assert_array_equal(next(batches.epoch(0))["mask"], np.ones(2, np.float32), strict=True)
    with pytest.raises(ValueError, match=r"make_epoch\(0\) batch 0: expected a batch size that is a multiple of 4"):
        next(GeneratorBatches(epochs_of_varying_length, multiple_of=4).iterate())
    with pytest.raises(ValueError, match=r"cannot resume at batch 5 of epoch 0: make_epoch\(0\) gave only 2"):
        next(batches.iterate(Position(0, 5)))
    with pytest.raises(ValueError, match="epoch 0 produced no batches"):
        next(GeneratorBatches(lambda epoch: []).iterate())
    with pytest.raises(ValueError, match="sharing their leading"):
        next(GeneratorBatches(lambda epoch: [{"x": np.zeros(2), "y": np.zeros(3)}]).iterate())


def test_make_batches_dispatches_on_the_kind_of_data():
    assert make_batches({"x": np.zeros((10, 2))}, 4, multiple_of=2).steps_per_epoch == 3
    assert isinstance(make_batches(ids_dataset(5), 2), Batches)
    assert isinstance(make_batches(epochs_of_varying_length, 2), GeneratorBatches)
    batches = Batches(ids_dataset(5), 2)
    assert make_batches(batches, 99) is batches
    with pytest.raises(ValueError, match="make_batches: expected a Dataset"):
        make_batches(3, 2)


# ---- processes ----------------------------------------------------------------------------------


def test_host_slices_are_contiguous_and_cover_the_global_batch():
    batch = next(Batches(ids_dataset(12), 12, seed=0).epoch(0))
    parts = [host_slice(batch, index, 3) for index in range(3)]
    for name in batch:
        np.testing.assert_array_equal(np.concatenate([p[name] for p in parts]), batch[name])
    np.testing.assert_array_equal(parts[1]["idx"], batch["idx"][4:8])
    assert host_slice(batch)["idx"].shape == (12,)  # one process here: the whole batch
    with pytest.raises(ValueError, match="batch size divisible by the process count 5"):
        host_slice(batch, 0, 5)


def test_shard_batch_in_one_process_is_device_put():
    sharding = NamedSharding(Mesh(jax.devices(), ("data",)), P("data"))
    batch = {"x": np.arange(16.0, dtype=np.float32).reshape(8, 2), "mask": np.ones(8, np.float32)}
    on_device = shard_batch(batch, sharding)
    assert set(on_device) == {"x", "mask"}
    assert on_device["x"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(on_device["x"]), batch["x"], strict=True)


def test_array_dataset_gathers_large_batches_into_aligned_buffers_like_numpy_indexing():
    rng = np.random.default_rng(0)
    arrays = {
        "big": rng.standard_normal((300, 40)).astype(np.float32),  # 160 bytes a row: aligned from 103 rows on
        "ids": np.arange(300, dtype=np.int64),
        "text": np.array([f"row {i}" for i in range(300)], dtype=object),
    }
    data = ArrayDataset(**arrays)
    indices = np.concatenate([rng.permutation(300)[:199], [-1]])  # a negative index counts from the end
    batch = data[indices]
    for name, array in arrays.items():
        np.testing.assert_array_equal(batch[name], array[indices], strict=True)
    assert batch["big"].ctypes.data % 64 == 0 and batch["big"].flags.c_contiguous  # XLA's CPU client can share it
    with pytest.raises(IndexError, match="index 300 is out of bounds for an ArrayDataset of 300 examples"):
        data[np.array([0, 300])]
    np.testing.assert_array_equal(data[np.array([True] * 3 + [False] * 297)]["ids"], [0, 1, 2])  # NumPy's own


def test_generator_batches_check_a_declared_epoch_length():
    batches = GeneratorBatches(epochs_of_varying_length, steps_per_epoch=2)
    assert batches.steps_per_epoch == 2 and GeneratorBatches(epochs_of_varying_length).steps_per_epoch is None
    assert len(list(batches.epoch(0))) == 2
    with pytest.raises(ValueError, match=r"make_epoch\(1\) gave 3 batches, but GeneratorBatches was told"):
        list(batches.epoch(1))
