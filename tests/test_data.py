"""Datasets: the bundled digits split, and torchvision's on-disk formats read without network."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from runner.data.sets import batches, load_data, resize_images, validate_data
from runner.run.train import train
from schedulers import ConfigError
from schedulers.binder import plain
from tests.helpers import imported_by, make_cfg, make_values, read_metrics


def write_idx_dataset(folder: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """A tiny data set in the IDX format of MNIST/FashionMNIST (what torchvision reads)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        # images that carry their label (a bright row at the label's height) plus noise
        images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        images[np.arange(n), labels * 2 + 4, :] = 255
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes()
        )
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.tobytes()
        )


@pytest.mark.parametrize(
    ("data", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_idx_files_on_disk_train_one_epoch(tmp_path, data, folder):
    write_idx_dataset(tmp_path / "root" / folder / "raw", n_train=200, n_test=50)
    cfg = make_cfg("logger=none", f"data={data}", f"data.root={tmp_path / 'root'}", "epochs=1")
    loaded = load_data(plain(cfg.data))
    assert loaded.image_shape == (1, 28, 28)
    assert (len(loaded.y_train), len(loaded.y_val)) == (200, 50)
    assert loaded.x_train.mean().abs() < 1e-4  # standardised with train statistics

    result = train(cfg, tmp_path / "run")
    assert result.status == "completed"
    assert len(read_metrics(tmp_path / "run")) == 1


def test_limit_takes_the_first_training_images(tmp_path):
    write_idx_dataset(tmp_path / "MNIST" / "raw", n_train=100, n_test=20)
    cfg = make_values("data=mnist", f"data.root={tmp_path}", "data.limit=30")
    assert len(load_data(cfg["data"]).y_train) == 30


@pytest.mark.parametrize("data", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_root_names_key_path_and_fix(tmp_path, data):
    cfg = make_values(f"data={data}", f"data.root={tmp_path / 'nothing'}")
    with pytest.raises(ConfigError) as err:
        validate_data(cfg["data"])
    assert err.value.key == "data.root"
    assert str(tmp_path / "nothing") in str(err.value)
    assert "download=True" in str(err.value)


def test_corrupt_cifar_files_give_a_config_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        (folder / name).write_bytes(b"not a pickle")
    cfg = make_values("data=cifar10", f"data.root={tmp_path}")
    with pytest.raises(ConfigError) as err:
        load_data(cfg["data"])
    assert err.value.key == "data.root"


def test_digits_split_is_stratified_and_fixed_by_split_seed():
    cfg = make_values()
    a, b = load_data(cfg["data"]), load_data(cfg["data"])
    assert (len(a.y_train), len(a.y_val)) == (1437, 360)
    assert a.image_shape == (1, 8, 8) and a.num_classes == 10
    assert (a.x_val == b.x_val).all() and (a.y_train == b.y_train).all()
    counts = np.bincount(a.y_val.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # ~36 of each digit: stratified
    other = load_data(make_values("data.split_seed=1")["data"])
    assert not (other.y_val == a.y_val).all()


@pytest.mark.parametrize("fraction", [0.2, 0.05, 0.35, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 123])
def test_digits_and_their_split_are_scikit_learns_without_importing_it(fraction, seed):
    """runner/data/digits.py reads load_digits' file and splits it as
    train_test_split(stratify=y, random_state=seed) does, index for index."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from runner.data import digits

    images, target = digits.load()
    reference = load_digits()
    assert np.array_equal(images, reference.images)
    assert np.array_equal(target, reference.target)
    train_idx, val_idx = train_test_split(
        list(range(len(target))), test_size=fraction, stratify=target, random_state=seed
    )
    ours = digits.stratified_split(target, fraction, seed)
    assert [ours[0].tolist(), ours[1].tolist()] == [list(train_idx), list(val_idx)]


@pytest.mark.slow
def test_a_run_on_digits_does_not_import_scikit_learn():
    """Its import (with scipy's) was 1.3 s of every digits run's start-up."""
    code = (
        "from runner.data.sets import load_data; "
        "from tests.helpers import make_values; load_data(make_values()['data'])"
    )
    assert imported_by(code, ("sklearn", "scipy")) == []


def test_batches_cover_every_sample_once_in_a_seeded_order():
    import torch

    x = torch.arange(10).float().unsqueeze(1)
    y = torch.arange(10)

    def order(seed):
        return torch.cat([yb for _, yb in batches(x, y, 3, torch.Generator().manual_seed(seed))])

    assert sorted(order(0).tolist()) == list(range(10))
    assert order(0).tolist() == order(0).tolist() != order(1).tolist()
    sizes = [len(yb) for _, yb in batches(x, y, 3)]
    assert sizes == [3, 3, 3, 1]


def write_cifar_dataset(root: Path, per_batch: int, seed: int = 0) -> None:
    """A tiny data set in CIFAR-10's python format (the layout torchvision reads)."""
    import pickle

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        with (folder / name).open("wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)


def test_cifar_files_on_disk_load_as_tensors(tmp_path):
    write_cifar_dataset(tmp_path, per_batch=12)
    data = load_data(make_values("data=cifar10", f"data.root={tmp_path}")["data"])
    assert data.image_shape == (3, 32, 32)
    assert (len(data.y_train), len(data.y_val)) == (60, 12)
    assert data.x_train.mean(dim=(0, 2, 3)).abs().max() < 1e-4  # standardised per channel


@pytest.mark.slow
def test_cifar10_fast_preset_trains_on_a_tiny_cifar_set(tmp_path):
    write_cifar_dataset(tmp_path / "data", per_batch=16)
    cfg = make_cfg(
        "+experiment=cifar10_fast",
        f"data.root={tmp_path / 'data'}",
        "epochs=1",
        # one step of 8 images: a ResNet-18 backward pass in bf16 takes seconds on a CPU
        "data.limit=8",
        "data.batch_size=8",
        "logger=none",
        "trainer.progress=line",
    )
    assert (cfg.model.name, cfg.scheduler.name, cfg.scheduler.interval) == (
        "resnet18",
        "onecycle",
        "step",
    )
    assert cfg.data.augment and cfg.trainer.amp
    result = train(cfg, tmp_path / "run")
    assert result.status == "completed"
    assert len(read_metrics(tmp_path / "run")) == 1


def test_batch_augmentation_is_a_seeded_random_crop_and_flip():
    import torch

    from runner.data.sets import augment

    x = torch.randn(16, 3, 8, 8)
    out = augment(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape
    again = augment(x, torch.Generator().manual_seed(0), pad=2)
    assert torch.equal(out, again)
    assert not torch.equal(out, augment(x, torch.Generator().manual_seed(1), pad=2))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):  # every image is a 8x8 window of its padded self, maybe mirrored
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)


def test_resizing_the_set_once_equals_resizing_every_batch():
    """LeNet's runs upsample the 8x8 digits once; the model would do it per batch."""
    data = load_data(make_values()["data"])
    big = resize_images(data, 32)
    assert big.x_train.shape[1:] == (1, 32, 32) and torch.equal(big.y_val, data.y_val)
    idx = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(0))[:64]
    per_batch = F.interpolate(data.x_train[idx], size=32, mode="bilinear", align_corners=False)
    assert torch.equal(big.x_train[idx], per_batch)
    assert resize_images(data, 8) is data and resize_images(data, None) is data
