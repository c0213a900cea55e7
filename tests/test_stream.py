"""data=dataset: any torch Dataset by `_target_`, streamed through a DataLoader with a seeded
order; the same rows with any num_workers, after a kill -9 and resume, and materialised."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from runner.config.schema import run_spec
from runner.data import stream
from runner.data.sets import TensorData, load_data
from runner.data.stream import EpochBatches, SeededSamples, StreamData
from runner.run.train import train
from schedulers.binder import plain
from tests.helpers import (
    cli_in_process,
    comparable,
    make_cfg,
    one_torch_thread,
    pipeline,
    read_metrics,
    run_cli,
    start,
    wait_for_rows,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = ("logger=none", "trainer.progress=line", "model.hidden=[16]", "data.batch_size=16")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """An ImageFolder tree of 8x8 RGB PNGs, 3 classes: 60 train, 20 val images, each class
    brightest in its own channel."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("val", 20)):
        for i in range(n):
            c = i % 3
            pixels = rng.integers(0, 120, (8, 8, 3), dtype=np.uint8)
            pixels[..., c] += 120
            path = root / split / f"class{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return root


@pytest.fixture
def importable(monkeypatch):
    """`tests.user_datasets` importable by the runner's subprocesses, as a user's package."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


def folder_args(
    root: Path,
    *,
    random: bool = True,
    target: str = "torchvision.datasets.ImageFolder",
    extra: str = "",
) -> list[str]:
    """data=dataset with an ImageFolder (or `target`) per split; `extra` adds train kwargs."""
    return [
        "data=dataset",
        f"data.train={{_target_:{target},root:'{root}/train',transform:{pipeline(random)}{extra}}}",
        f"data.val={{_target_:{target},root:'{root}/val',transform:{pipeline(False)}}}",
    ]


def run_in_process(tmp_path: Path, name: str, args: list[str]) -> list[dict]:
    run_dir = tmp_path / name
    with one_torch_thread():
        result = train(make_cfg(*args), run_dir, overrides=args)
    assert result.status == "completed"
    return read_metrics(run_dir)


def test_a_sample_is_seeded_by_run_seed_epoch_and_index_alone(folder):
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    tf = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomCrop(8, padding=2),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    ds = SeededSamples(ImageFolder(str(folder / "train"), transform=tf), seed=3)
    before = torch.get_rng_state()
    a = [ds[(1, i)][0] for i in range(6)]
    assert torch.equal(torch.get_rng_state(), before)  # the training RNG is left alone
    assert all(torch.equal(x, ds[(1, i)][0]) for i, x in reversed(list(enumerate(a))))
    assert any(not torch.equal(x, ds[(2, i)][0]) for i, x in enumerate(a))  # epoch 2 redraws
    other = SeededSamples(ds.dataset, seed=4)
    assert any(not torch.equal(x, other[(1, i)][0]) for i, x in enumerate(a))


@pytest.mark.slow
def test_image_folder_with_random_transforms_gives_the_same_rows_with_any_num_workers(
    tmp_path, folder, caplog
):
    args = [*folder_args(folder), *FAST, "epochs=3", "data.in_memory=auto"]
    with caplog.at_level(logging.INFO, logger="schedlab"):
        two = run_in_process(tmp_path, "two", [*args, "data.num_workers=2"])
    assert "data.in_memory=auto: streamed: the train transforms are random" in caplog.text
    zero = run_in_process(tmp_path, "zero", [*args, "data.num_workers=0"])
    assert [r["epoch"] for r in two] == [0, 1, 2]
    assert comparable(two) == comparable(zero)  # every value, every epoch
    assert two[-1]["train/loss"] < two[0]["train/loss"]  # it learns from the images
    assert all(0 <= r["time/data_s"] <= r["time/epoch_s"] for r in two)
    other_seed = run_in_process(tmp_path, "seed1", [*args, "seed=1"])
    assert comparable(other_seed) != comparable(zero)


@pytest.mark.slow
def test_resume_after_sigkill_of_a_streamed_run_equals_an_uninterrupted_run(
    tmp_path, folder, importable
):
    # 5 ms a sample: ~0.2 s an epoch with 2 workers, slow enough to be killed mid-run
    args = [*folder_args(folder, target="tests.user_datasets.SlowFolder", extra=",delay_s:0.005"),
            *FAST, "epochs=6", "data.num_workers=2", "trainer.checkpoint_interval_s=0",
            "scheduler=step", "scheduler.step_size=2"]  # fmt: skip
    run_dir = tmp_path / "run"
    proc = start([*args, f"hydra.run.dir={run_dir}"], tmp_path, own_group=True)
    wait_for_rows(run_dir, 2, proc)
    # SIGKILL to the run and its workers, as kill -9 of a job's process group (Slurm's):
    # no handler, no cleanup. (One worker once outlived a killed parent, holding the pipes.)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (run_dir / "status.json").exists()
    assert len(read_metrics(run_dir)) < 6

    with one_torch_thread():
        resumed = train(make_cfg(f"resume={run_dir}"), run_dir, overrides=[f"resume={run_dir}"])
    assert resumed.status == "completed"
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == list(range(6))
    assert comparable(rows) == comparable(run_in_process(tmp_path, "reference", args))


@pytest.mark.slow
def test_a_user_dataset_class_trains_through_the_cli(tmp_path, importable):
    blobs = "tests.user_datasets.Blobs"
    args = ["data=dataset", f"data.train={{_target_:{blobs},size:90}}",
            f"data.val={{_target_:{blobs},size:30,offset:1}}", *FAST, "epochs=3",
            "data.num_workers=1", "data.in_memory=false"]  # fmt: skip
    proc = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 3
    assert rows[-1]["val/acc"] > 0.6  # 3 well-separated classes: far above chance


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        (",sizze:3", "data.train.sizze", "has no argument 'sizze'"),
        ("nested", "data.train.transform.transforms.1.sise", "RandomCrop has no argument"),
        ("nope", "data.train.root", "not found"),
        ("empty", "data.train.root", "Couldn't find any class folder"),
        ("pil", "data.train.transform", "float tensor"),
    ],
    ids=["typo", "nested-typo", "missing-root", "empty-root", "no-to-tensor"],
)  # fmt: skip
def test_a_bad_dataset_node_is_a_config_error_naming_its_key(
    tmp_path, folder, importable, extra, key, words
):
    blobs = "tests.user_datasets.Blobs"
    crop = pipeline(random=True).replace("size:8", "sise:8")
    train = {
        "nested": f"{{_target_:torchvision.datasets.ImageFolder,root:'{folder}/train',"
        f"transform:{crop}}}",
        "nope": f"{{_target_:torchvision.datasets.ImageFolder,root:'{tmp_path}/nope'}}",
        "empty": f"{{_target_:torchvision.datasets.ImageFolder,root:'{tmp_path}'}}",
        "pil": "{_target_:torchvision.datasets.FakeData,size:4}",
    }.get(extra, f"{{_target_:{blobs},size:9{extra}}}")
    val = "data.val={_target_:tests.user_datasets.Blobs,size:9}"  # required with data.train
    proc = cli_in_process("data=dataset", f"data.train={train}", val, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"config error: {key}=" in proc.stderr
    assert words in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_num_classes_is_asked_for_when_the_dataset_cannot_say(tmp_path, importable):
    train = "{_target_:tests.user_datasets.NoClasses,size:9}"
    val = "data.val={_target_:tests.user_datasets.Blobs,size:9}"  # required with data.train
    proc = cli_in_process("data=dataset", f"data.train={train}", val, cwd=tmp_path)
    assert proc.returncode == 2
    assert "config error: data.num_classes=None: NoClasses has no `classes`" in proc.stderr
    assert "set data.num_classes" in proc.stderr
    proc = cli_in_process(
        "data=dataset", "data.train={_target_:torch.nn.Identity}", val, cwd=tmp_path
    )
    assert "data.train._target_='torch.nn.Identity': is not a map-style" in proc.stderr


def test_in_memory_true_gives_the_rows_of_the_streamed_run(tmp_path, folder):
    args = [*folder_args(folder, random=False), *FAST, "epochs=2"]
    held = run_in_process(tmp_path, "held", [*args, "data.in_memory=true"])
    streamed = run_in_process(tmp_path, "streamed", [*args, "data.in_memory=false"])
    assert comparable(held) == comparable(streamed)


def test_in_memory_auto_streams_random_transforms_and_holds_the_rest(folder, caplog):
    def choose(random: bool) -> object:
        cfg = make_cfg(*folder_args(folder, random=random), "data.in_memory=auto")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="schedlab"):
            return load_data(plain(cfg.data))

    held = choose(random=False)
    assert isinstance(held, TensorData)
    assert held.x_train.shape == (60, 3, 8, 8) and held.num_classes == 3
    assert "data.in_memory=auto: materialised in memory: no random transforms" in caplog.text
    streamed = choose(random=True)
    assert isinstance(streamed, StreamData)
    assert (streamed.image_shape, streamed.num_classes) == ((3, 8, 8), 3)
    assert "data.in_memory=auto: streamed: the train transforms are random" in caplog.text


def test_a_dataset_run_logs_its_in_memory_decision_into_its_log(monkeypatch, caplog):
    """`load` logs data.in_memory's decision before the run's log is open: a data=dataset
    run's loaders log it again; a run on other data logs none that an earlier data=dataset
    load in the process left."""
    choice = "data.in_memory=auto: materialised in memory: no random transforms"
    monkeypatch.setattr(stream, "last_choice", choice)
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4).long()
    held = TensorData(x, y, x[:2], y[:2], 2)
    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="schedlab"):
        assert stream.loaders_for(held, 4, 0, cpu, dataset=True) is None  # in memory
        assert caplog.messages == [choice]
        stream.loaders_for(held, 4, 0, cpu, dataset=False)
    assert caplog.messages == [choice]


def test_the_lr_range_test_streams_a_streamed_dataset(tmp_path, folder):
    from runner.train.range_test import find_lr

    cfg = make_cfg(
        *folder_args(folder),
        *FAST,
        "data.in_memory=false",
        "lr_find.num_iters=12",
        "lr_find.val_every=4",
    )
    with one_torch_thread():
        lr, result = find_lr(run_spec(cfg), tmp_path / "lr_find")
    assert len(result.lrs) == 3  # 12 batches (4 streamed epochs), val loss every 4th
    assert all(np.isfinite(result.losses)) and lr > 0
    assert (tmp_path / "lr_find" / "lr_find.csv").exists()


def test_a_streamed_dataset_is_not_fused_unless_held_in_memory(folder):
    from runner.sweep.fused import why_not_fusable

    args = [*folder_args(folder, random=False), *FAST]
    assert "data=dataset is streamed" in why_not_fusable(make_cfg(*args, "data.in_memory=false"))
    assert why_not_fusable(make_cfg(*args, "data.in_memory=true")) is None


def test_under_ddp_each_rank_fetches_only_its_share_of_each_global_batch():
    """The in-memory path's slice (every world-th sample from the rank-th), taken by the
    sampler, so a rank's loader fetches and transforms only the samples it trains on; the
    shares of all ranks are the global batch, the last (smaller) one included."""
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    whole = EpochBatches(10, 4)
    whole.set_epoch(3, order)
    ranks = [EpochBatches(10, 4, rank, 2) for rank in range(2)]
    for sampler in ranks:
        sampler.set_epoch(3, order)
    shares = [list(sampler) for sampler in ranks]
    assert list(whole.global_sizes()) == [4, 4, 2]
    for k, batch in enumerate(whole):
        assert shares[0][k] == batch[0::2] and shares[1][k] == batch[1::2]
    assert all(e == 3 for share in shares for batch in share for e, _ in batch)


def test_a_batch_is_fetched_with_one_save_and_restore_of_the_rngs_and_per_sample_seeds():
    """SeededSamples.__getitems__ (the DataLoader's batch fetch): the same samples as one
    __getitem__ each, and training's RNGs as they were."""

    class Noisy(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int):
            return torch.rand(2) + float(np.random.rand()), i

    samples = SeededSamples(Noisy(), seed=5)
    keys = [(1, i) for i in (3, 0, 7)]
    torch.manual_seed(0)
    before = torch.get_rng_state()
    batch = samples.__getitems__(keys)
    assert torch.equal(torch.get_rng_state(), before)
    for (x, i), key in zip(batch, keys, strict=True):
        alone, j = samples[key]
        assert i == j == key[1] and torch.equal(x, alone)
    assert not torch.equal(batch[0][0], batch[1][0])  # each sample its own seed


@pytest.mark.slow
def test_a_sweep_over_streamed_data_runs_under_the_fused_launcher_and_reports(tmp_path, folder):
    """The fused launcher cannot stack a streamed set: each job runs on its own with the
    usual notice, and the sweep's report (table, paired comparison, plots) reads the
    streamed runs like any other."""
    import csv

    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "hydra/launcher=fused",
        *folder_args(folder),
        *FAST,
        "data.in_memory=false",
        "epochs=2",
        "scheduler=step,cosine",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert out.count("runs on its own: data=dataset is streamed") == 4
    with (sweep / "report.csv").open() as f:
        table = list(csv.DictReader(f))
    assert sorted(r["config"] for r in table) == ["scheduler=cosine", "scheduler=step"]
    assert all(r["completed"] == "2" for r in table)
    report = (sweep / "report.md").read_text()
    assert "scheduler=cosine" in report and "paired" in report.lower()
    assert any(sweep.glob("*.png"))
    for run_dir in sorted(p.parent for p in sweep.glob("*/metrics.jsonl")):
        rows = read_metrics(run_dir)
        assert [r["epoch"] for r in rows] == [0, 1] and all("time/data_s" in r for r in rows)


class Draws(torch.utils.data.Dataset):
    """Samples that draw from torch's generator, and from Python's or numpy's for the
    indices in `others` (a transform that uses them only sometimes)."""

    def __init__(self, others: dict[int, str]) -> None:
        self.others = others

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        x = torch.rand(2)
        if self.others.get(i) == "numpy":
            x += float(np.random.rand())
        elif self.others.get(i) == "random":
            import random

            x += random.random()
        return x, i


@pytest.mark.parametrize("other", [None, "numpy", "random"])
def test_only_torchs_generator_is_seeded_until_a_sample_draws_from_another(other):
    """Every sample equals the one fetched with all three global RNGs seeded from (seed,
    epoch, index), whichever generators the dataset draws from; a batch that drew from
    Python's or numpy's is fetched again fully seeded, and so is every batch after it."""
    from runner.data.stream import isolated_rng, sample_seed

    dataset = Draws({5: other} if other else {})
    samples = SeededSamples(dataset, seed=7)
    batches = [[(2, i) for i in (0, 1, 2)], [(2, i) for i in (3, 5, 4)], [(2, 6), (2, 7)]]
    np.random.seed(1)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy())
    for k, keys in enumerate(batches):
        got = samples.__getitems__(keys)
        for (x, _), (epoch, i) in zip(got, keys, strict=True):
            with isolated_rng(sample_seed(7, epoch, i)):
                expected = dataset[i][0]
            assert torch.equal(x, expected), (other, i)
        assert samples.every_rng == (other is not None and k >= 1)
    assert torch.equal(torch.get_rng_state(), before[0])  # training's RNGs left alone
    assert np.array_equal(np.random.get_state()[1], before[1])
