"""A researcher's own model and data in the first hour (session 19 QA): what trained wrong
with exit 0, crashed after an epoch, or answered with a hint that led elsewhere.

- a model ending in softmax trained on cross_entropy of probabilities (digits, 3 epochs:
  val/acc 0.32 against 0.94), exit 0;
- data.val on data.train's files (a copied `root:`) scored the training samples, exit 0;
  `data.val: ${data.train}` was broken by the run's absolute paths;
- BatchNorm and an epoch whose last batch holds one sample crashed at that batch;
- `model._target_=X` without model=target got Hydra's "+model._target_=X", a second error;
- samples of (x, y, index) or dicts were blamed on transforms."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner.config.schema import run_spec
from runner.data.fingerprint import absolute_roots
from runner.data.stream import check_splits
from runner.run.check import validate
from runner.train.builders import build_run
from schedulers import ConfigError
from tests.helpers import cli_in_process, make_cfg, run_cli

MODELS = "tests.user_models"
SMALL = ("data=fake", "data.train_size=9", "data.val_size=4", "data.num_classes=3")


def error_of(*overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides))
    return err.value


@pytest.mark.parametrize(
    ("model", "why"),
    [("Softmaxed", "outputs probabilities"), ("Detached", "carry no gradient")],
)
def test_scores_the_loss_cannot_train_on_are_refused_when_built(model: str, why: str) -> None:
    # before: Softmaxed trained with exit 0 (badly); Detached crashed at its first backward
    with pytest.raises(ConfigError) as err:
        build_run(run_spec(make_cfg("model=target", f"model._target_={MODELS}.{model}", *SMALL)))
    assert err.value.key == "model._target_" and why in str(err.value)
    if model == "Softmaxed":  # log-probabilities: cross_entropy's log-softmax keeps them
        build_run(
            run_spec(make_cfg("model=target", f"model._target_={MODELS}.LogSoftmaxed", *SMALL))
        )


def test_batch_norm_and_a_batch_of_one_sample_are_refused_at_start_up() -> None:
    bn = ("model=target", f"model._target_={MODELS}.BnNet", *SMALL)
    err = error_of(*bn, "data.batch_size=4")  # 9 = 2 x 4 + 1: the epoch's last batch
    assert err.key == "data.batch_size" and err.value == 4
    assert "last batch holds 1 sample" in str(err) and "data.batch_size=5" in str(err)
    assert "every batch holds 1 sample" in str(error_of(*bn, "data.batch_size=1"))
    validate(make_cfg(*bn, "data.batch_size=3"))  # 9 = 3 x 3
    validate(make_cfg(*SMALL, "model.hidden=[8]", "data.batch_size=4"))  # no BatchNorm


@pytest.mark.parametrize(
    "val_root", ["imgs/train", "./imgs/train/", "${data.train.root}"], ids=["same", "spelt", "ref"]
)
def test_a_val_split_on_the_train_files_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, val_root: str
) -> None:
    for split in ("train", "val"):
        (tmp_path / "imgs" / split).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    folder = "_target_:torchvision.datasets.ImageFolder"
    train = f"data.train={{{folder},root:imgs/train}}"
    flip = "transform:{_target_:torchvision.transforms.v2.RandomHorizontalFlip}"
    err = error_of("data=dataset", train, f"data.val={{{folder},root:'{val_root}',{flip}}}")
    assert err.key == "data.val.root" and "val/acc would score the training samples" in str(err)
    # data.val: ${data.train}, the whole node: the same error
    err = error_of("data=dataset", train, "data.val=${data.train}")
    assert err.key == "data.val.root"
    # files of its own; a class that draws its samples given the same arguments twice (no
    # path: they may differ): no error
    folder = "torchvision.datasets.ImageFolder"
    own = {"_target_": folder, "root": "imgs/val"}
    check_splits(
        {"train": {"_target_": folder, "root": "imgs/train"}, "val": own, "val_fraction": None}
    )
    blobs = {"_target_": "tests.user_datasets.Blobs", "size": 8}
    check_splits({"train": blobs, "val": dict(blobs), "val_fraction": None})


def test_absolute_roots_leave_an_interpolated_split_whole(tmp_path: Path) -> None:
    # a split given as ${...}: its path was written into it, leaving {root: ...} alone
    folder = "torchvision.datasets.ImageFolder"
    cfg = OmegaConf.create(
        {
            "sets": {"held_out": {"_target_": folder, "root": "imgs/val"}},
            "data": {
                "train": {"_target_": folder, "root": "imgs/train"},
                "val": "${sets.held_out}",
            },
        }
    )
    absolute_roots(cfg)
    assert cfg.data.val._target_ == folder  # the interpolation kept
    assert Path(cfg.data.train.root).is_absolute()


@pytest.mark.parametrize(
    ("override", "wanted"),
    [
        (f"model._target_={MODELS}.TinyNet", f"model=target model._target_={MODELS}.TinyNet"),
        ("optimizer._target_=torch.optim.RMSprop", "optimizer=target optimizer._target_="),
        ("data.train._target_=tests.user_datasets.Blobs", "data=dataset 'data.train={_target_:"),
        ("data.train.root=imgs/train", "a Dataset of your own takes data=dataset"),
    ],
    ids=["model", "optimizer", "data-target", "data-root"],
)
def test_a_target_on_a_built_in_option_says_which_option_takes_it(
    tmp_path: Path, override: str, wanted: str
) -> None:
    out = cli_in_process(override, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert wanted in out.stderr and "To append" not in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("form", "kind"), [("triple", "a tuple of 3 values"), ("dict", "a dict with keys")]
)
def test_samples_that_are_not_pairs_are_named_as_such(form: str, kind: str) -> None:
    node = f"{{_target_:tests.user_datasets.Fielded,size:12,form:{form}}}"
    val = f"{{_target_:tests.user_datasets.Fielded,size:6,form:{form},offset:1}}"
    err = error_of("data=dataset", f"data.train={node}", f"data.val={val}", "model.hidden=[8]")
    assert err.key == "data.train[0]" and kind in str(err) and "data.collate_fn" in str(err)


@pytest.mark.parametrize(
    ("preset", "key"),
    [
        ("defaults:\n  - override /model: logistic\nepochs: 2\n", "+experiment='mine'"),
        ("epochs: 2\noptimizer:\n  lr: 0.01\n", "experiment={'epochs': 2"),
    ],
    ids=["overrides-a-group", "sets-keys"],
)
def test_a_preset_without_its_package_line_says_to_add_it(
    tmp_path: Path, preset: str, key: str
) -> None:
    # before: Hydra's "Could not override 'model@experiment.model'. Did you mean to override
    # model?", or "experiment={...}: unknown key", neither naming the missing line
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_text(preset)
    out = cli_in_process("--config-dir", "conf", "+experiment=mine", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert f"config error: {key}" in out.stderr and "# @package _global_" in out.stderr


def test_help_shows_how_to_bring_a_model_data_and_groups_of_your_own(tmp_path: Path) -> None:
    # before: the groups listed `target` and `dataset` with no word on how to use them
    out = run_cli("--help", cwd=tmp_path).stdout
    assert "model=target model._target_=mypkg" in out and "docs/project.md" in out
    assert "data=dataset 'data.train={_target_:" in out and "--config-dir my_conf" in out


def test_a_model_half_in_float64_is_refused_at_start_up() -> None:
    # before: start-up's forward pass ran on meta, whose matmul takes float32 into a float64
    # layer; the run then crashed at its first batch (exit 1)
    err = error_of("model=target", f"model._target_={MODELS}.HalfDouble", "data.batch_size=32")
    assert err.key == "model._target_" and "must have the same dtype" in str(err)


def test_a_val_folder_missing_a_class_is_refused_not_scored_against_other_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # before: val's eel got label 1 (train's dog), val/acc scored it so, exit 0
    from PIL import Image

    for split, names in (("train", ("cat", "dog", "eel")), ("val", ("cat", "eel"))):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / name / "0.png")
    monkeypatch.chdir(tmp_path)
    v2 = "torchvision.transforms.v2"
    to_float = (
        f"transform:{{_target_:{v2}.Compose,transforms:[{{_target_:{v2}.ToImage}},"
        f"{{_target_:{v2}.ToDtype,dtype:{{_target_:hydra.utils.get_object,path:torch.float32}},"
        "scale:true}]}"
    )
    folder = f"_target_:torchvision.datasets.ImageFolder,{to_float}"
    splits = ("data=dataset", f"data.train={{{folder},root:train}}", "model.hidden=[8]")
    err = error_of(*splits, f"data.val={{{folder},root:val}}")
    assert err.key == "data.val.root" and "class 'eel' is 1 here and is 2 in data.train" in str(err)
    (tmp_path / "val" / "dog").mkdir()  # train's class folders, one empty: the same indices
    validate(make_cfg(*splits, f"data.val={{{folder},root:val,allow_empty:true}}"))


def test_pretrained_torchvision_weights_on_other_classes_say_how_to_replace_the_head() -> None:
    # before: "model._target_=...: building the model failed: The parameter 'num_classes'
    # expected value 1000 but got 3", a num_classes the user never set
    err = error_of(
        "model=target", "model._target_=torchvision.models.resnet18", "+model.weights=DEFAULT"
    )
    assert err.key == "model.weights" and "replaces its head" in str(err)


def test_a_run_of_a_model_of_your_own_is_filed_under_its_class_name() -> None:
    # before: every model=target run under outputs/runs/target-cosine/, whatever the class
    from runner.config.compose import compose_config

    cfg = compose_config(["model=target", f"model._target_={MODELS}.TinyNet"], with_hydra=True)
    assert str(cfg.hydra.run.dir).startswith("outputs/runs/TinyNet-cosine/")


def test_a_searchpath_dir_that_does_not_exist_is_named(tmp_path: Path) -> None:
    # before: Hydra skipped it without a word: "Could not find 'model/mine'", the options
    # listed without the user's (--config-dir's own typo was already named)
    out = cli_in_process("hydra.searchpath=[file://my_conf]", "model=mine", cwd=tmp_path)
    assert out.returncode == 2
    assert "config error: hydra.searchpath='my_conf': no such directory" in out.stderr, out.stderr


def test_a_key_inside_a_file_name_is_not_the_key_an_error_names() -> None:
    # before: MNIST's "Error downloading train-images-idx3-ubyte.gz" was blamed on
    # data.train.train=True, not on its download
    from schedulers.binder import key_named_in

    failed = "Error downloading train-images-idx3-ubyte.gz: Tried https://x/mnist/train/"
    assert key_named_in("data.train", failed, ["train", "root"]) == "data.train._target_"
    assert key_named_in("optimizer", "Invalid alpha value: -1", ["alpha"]) == "optimizer.alpha"


@pytest.mark.parametrize(
    ("group", "text", "first"),
    [
        ("data", "train: {_target_: tests.user_datasets.Blobs, size: 9}\n", "[dataset, _self_]"),
        ("model", "name: mlp\nhidden: [8]\n", "[mlp, _self_]"),
    ],
    ids=["data-without-name", "model-without-dropout"],
)
def test_a_group_file_of_your_own_without_defaults_says_which_line_to_add(
    tmp_path: Path, group: str, text: str, first: str
) -> None:
    # before: data/mine.yaml without `name` was a KeyError traceback (exit 1); a model's
    # missing key "model.dropout=None: missing; its default is 0.0", not how to keep it
    (tmp_path / "conf" / group).mkdir(parents=True)
    (tmp_path / "conf" / group / "mine.yaml").write_text(text)
    out = cli_in_process("--config-dir", "conf", f"{group}=mine", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert f"starts with `defaults: {first}`" in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("transform", "key", "says"),
    [
        (
            "[{_target_:torchvision.transforms.v2.ToImage}]",
            "data.train.transform",
            "v2.Compose, transforms: [...]",
        ),
        (
            "{_target_:torchvision.transforms.v2.ToDtype,dtype:torch.float32}",
            "data.train.transform.dtype",
            "{_target_: hydra.utils.get_object, path: torch.float32}",
        ),
    ],
    ids=["list", "dtype-string"],
)
def test_transforms_yaml_cannot_say_are_named_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transform: str, key: str, says: str
) -> None:
    # before: "data.train[0]=None: imgs/train/cat/0.png: could not be read: TypeError:
    # 'list' object is not callable", or "ImageFolder failed: dtype must be a dict or a
    # torch.dtype, got str", naming neither the key nor the YAML that works
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
    monkeypatch.chdir(tmp_path)
    folder = "_target_:torchvision.datasets.ImageFolder"
    err = error_of(
        "data=dataset",
        f"data.train={{{folder},root:train,transform:{transform}}}",
        f"data.val={{{folder},root:val}}",
    )
    assert err.key == key and says in str(err)
