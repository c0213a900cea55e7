"""The user's data is checked before it can make a wrong number (issue #32): data.train never
validates on FakeData, labels are integer classes in range, a sample that cannot be read or
batched is named by split, index and file, and a CIFAR file in data.root is read as data,
never run."""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from runner.data.sets import load_data, validate_data
from runner.data.stream import Loaders, SampleError, StreamData
from schedulers import ConfigError
from tests.helpers import cli_in_process, make_values

ROOT = Path(__file__).resolve().parents[1]
BLOBS = "tests.user_datasets.Blobs"
ODD = "tests.user_datasets.Odd"
LISTED = "tests.user_datasets.Listed"  # Odd with `targets`
TRAIN = f"data.train={{_target_:{BLOBS},size:30}}"
VAL = f"data.val={{_target_:{BLOBS},size:9,offset:1}}"
V2 = "torchvision.transforms.v2"
TO_FLOAT = (
    f"{{_target_:{V2}.Compose,transforms:[{{_target_:{V2}.ToImage}},{{_target_:{V2}.ToDtype,"
    "dtype:{_target_:hydra.utils.get_object,path:torch.float32},scale:true}]}"
)


def odd(kind: str, at: int, *extra: str, target: str = ODD) -> list[str]:
    """data=dataset whose train split (30 Blobs) has one odd sample at `at`."""
    return [
        "data=dataset",
        f"data.train={{_target_:{target},size:30,kind:{kind},at:{at}}}",
        VAL,
        *extra,
    ]


def raised(*overrides: str) -> ConfigError:
    cfg = make_values(*overrides)
    validate_data(cfg["data"])
    with pytest.raises(ConfigError) as err:
        load_data(cfg["data"])
    return err.value


def first_streamed_epoch_error(data: StreamData) -> SampleError:
    """The error of a first epoch's fetch, without its traceback (whose frames would keep
    the DataLoader's workers alive into the next test)."""
    loaders = Loaders(data, 16, seed=0, device=torch.device("cpu"))
    try:
        for _ in loaders.train(0, torch.Generator().manual_seed(0)):
            pass
    except SampleError as err:
        return SampleError(err.key, err.rule)
    raise AssertionError("the epoch fetched every sample")


# -- no silent defaults for the user's data -----------------------------------------------------
def test_train_without_val_is_a_config_error_naming_data_val_never_fakedata():
    """It validated on torchvision FakeData (random noise): val/acc 0.11, exit 0."""
    with pytest.raises(ConfigError) as err:
        validate_data(make_values("data=dataset", TRAIN)["data"])
    assert err.value.key == "data.val"
    assert "data.val_fraction" in err.value.rule and "FakeData" in err.value.rule
    with pytest.raises(ConfigError) as err:
        validate_data(make_values("data=dataset", VAL)["data"])  # and the other way round
    assert err.value.key == "data.train"
    validate_data(make_values("data=dataset")["data"])  # neither: the FakeData demo, as before


def test_the_command_with_train_and_no_val_exits_2_in_one_line(tmp_path):
    """The probe's reproduction, as a user types it."""
    proc = cli_in_process("data=dataset", TRAIN, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("config error: data.val=None: must be given with data.train")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_val_fraction_is_a_seeded_stratified_split_of_train():
    def split(*extra: str) -> tuple[list[int], list[int]]:
        data_cfg = make_values(
            "data=dataset",
            f"data.train={{_target_:{LISTED},size:30,kind:none}}",
            "data.val_fraction=0.2",
            "data.in_memory=false",
            *extra,
        )["data"]
        validate_data(data_cfg)
        data = load_data(data_cfg)
        assert isinstance(data, StreamData) and data.num_classes == 3
        return list(data.train.indices), list(data.val.indices)

    train, val = split()
    assert len(train) == 24 and len(val) == 6 and sorted(train + val) == list(range(30))
    assert np.bincount(np.array(val) % 3).tolist() == [2, 2, 2]  # stratified by `targets`
    assert split() == (train, val)
    assert split("data.split_seed=1")[1] != val
    held = load_data(make_values("data=dataset", TRAIN, "data.val_fraction=0.5")["data"])
    assert (len(held.y_train), len(held.y_val)) == (15, 15)  # no `targets`: a seeded shuffle


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ([TRAIN, VAL, "data.val_fraction=0.2"], "data.val must be null"),
        (["data.val_fraction=0.2"], "needs data.train"),
        ([TRAIN, "data.val_fraction=1.0"], "must be"),
        ([TRAIN, "data.val_fraction=0.99"], "both splits need samples"),
    ],
    ids=["with-val", "demo", "one", "empty-train"],
)  # fmt: skip
def test_a_val_fraction_that_cannot_split_is_a_config_error(extra, words):
    data_cfg = make_values("data=dataset", *extra)["data"]
    with pytest.raises(ConfigError) as err:
        validate_data(data_cfg)
        load_data(data_cfg)
    assert err.value.key == "data.val_fraction" and words in str(err.value)


@pytest.mark.parametrize("in_memory", ["true", "false"])
def test_a_one_class_training_set_warns_once(in_memory, caplog):
    with caplog.at_level(logging.WARNING, logger="schedlab"):
        # streamed, the labels are known without fetching where the dataset lists them
        load_data(make_values(*odd("one", 0, f"data.in_memory={in_memory}", target=LISTED))["data"])
    warnings = [r for r in caplog.records if "one-class training set" in r.getMessage()]
    assert len(warnings) == 1 and "all 30 samples have label 0" in warnings[0].getMessage()


# -- labels -------------------------------------------------------------------------------------
LABELS = {
    "range": "label 7 is outside [0, 3)",
    "float": "is a float (not an integer)",
    "onehot": "label of shape (3,) (one-hot or multi-dim)",
    "str": "label 'mid' is a str",
}


@pytest.mark.parametrize("kind", list(LABELS))
@pytest.mark.parametrize(("at", "in_memory"), [(0, "false"), (5, "true")])
def test_a_bad_label_is_a_config_error_naming_split_and_index(kind, at, in_memory):
    """Held in memory every label is checked; streamed, start-up checks sample 0's."""
    err = raised(*odd(kind, at, f"data.in_memory={in_memory}"))
    assert err.key == f"data.train[{at}]"
    assert LABELS[kind] in err.rule and "tensor" not in err.rule
    assert "\n" not in str(err)


@pytest.mark.parametrize("kind", ["range", "str", "raises", "shape"])
def test_a_streamed_sample_is_checked_as_it_is_fetched(kind):
    """Mid-run: named by split and index. (From a DataLoader worker the error comes back
    as the same SampleError: the truncated PNG test below takes that path.)"""
    data = load_data(make_values(*odd(kind, 5, "data.in_memory=false"))["data"])
    err = first_streamed_epoch_error(data)
    assert err.key == "data.train[5]"
    assert (LABELS.get(kind) or {"raises": "cannot decode", "shape": "shape"}[kind]) in err.rule


def test_labels_of_a_bundled_data_set_are_checked_too(tmp_path):
    write_cifar(tmp_path, labels=[3, 10, 1])
    err = raised("data=cifar10", f"data.root={tmp_path}")
    assert err.key == "data.train[1]" and "label 10 is outside [0, 10)" in err.rule


# -- samples that cannot be read or batched -----------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "at", "in_memory", "index", "words"),
    [
        ("raises", 0, "false", 0, "could not be read: ValueError: cannot decode this sample"),
        ("raises", 5, "true", 5, "could not be read: ValueError: cannot decode this sample"),
        ("shape", 5, "true", 5, "shape (1, 5, 4), data.train[0]'s is (1, 4, 4)"),
    ],
)  # fmt: skip
def test_a_sample_that_cannot_be_read_or_batched_is_named(kind, at, in_memory, index, words):
    err = raised(*odd(kind, at, f"data.in_memory={in_memory}"))
    assert err.key == f"data.train[{index}]" and words in err.rule


def test_val_samples_of_another_shape_than_train_are_named():
    val = f"data.val={{_target_:{ODD},size:9,kind:shape,at:0}}"
    err = raised("data=dataset", TRAIN, val, "data.in_memory=false")
    assert err.key == "data.val[0]" and "shape (1, 5, 4), data.train[0]'s is (1, 4, 4)" in err.rule


def test_a_truncated_png_names_its_file_from_a_worker_too(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(6):
        path = tmp_path / "train" / f"c{i % 2}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    shutil.copytree(tmp_path / "train", tmp_path / "val")  # files of its own: not train's
    bad = tmp_path / "train" / "c1" / "3.png"
    bad.write_bytes(bad.read_bytes()[:100])
    folder = "_target_:torchvision.datasets.ImageFolder"
    node = f"{{{folder},root:'{tmp_path}/train',transform:{TO_FLOAT}}}"
    err = raised(
        "data=dataset",
        f"data.train={node}",
        f"data.val={{{folder},root:'{tmp_path}/val',transform:{TO_FLOAT}}}",
        "data.in_memory=true",
        "data.num_workers=1",
    )
    assert err.key == "data.train[4]"  # ImageFolder sorts c0's three files first
    assert err.rule.startswith(f"{bad}: could not be read: OSError: image file is truncated")


# -- files under data.root are data, never code -------------------------------------------------
def write_cifar(root: Path, labels: list[int], protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = np.zeros((len(labels), 3 * 32 * 32), dtype=np.uint8)
        batch = {b"data": data, b"labels": labels, b"batch_label": b"x", b"filenames": [b"a.png"]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.slow
@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_batches_load_through_the_restricted_unpickler(tmp_path, protocol):
    write_cifar(tmp_path, labels=[3, 9], protocol=protocol)
    data = load_data(make_values("data=cifar10", f"data.root={tmp_path}")["data"])
    assert data.y_train.tolist() == [3, 9] * 5 and data.x_train.shape == (10, 3, 32, 32)


class _Crafted:
    """What a hostile data_batch_1 holds: unpickling it would touch the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.mark.slow  # a subprocess run, ~5 s
def test_a_crafted_cifar_pickle_is_refused_unrun_exit_2_naming_the_file(tmp_path):
    write_cifar(tmp_path / "data", labels=[1, 2])
    marker = tmp_path / "marker"
    crafted = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1"
    crafted.write_bytes(pickle.dumps({b"data": _Crafted(marker), b"labels": [1]}))
    proc = cli_in_process("data=cifar10", "data.root=data", "epochs=1", "logger=none", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert not marker.exists()
    assert "cifar-10-batches-py/data_batch_1 unreadable" in proc.stderr
    assert "asks to import pathlib" in proc.stderr and "never run" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()
