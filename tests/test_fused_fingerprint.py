"""A fused member records the data fingerprint a single run of its config computes, so the
ordinary runner can resume it or branch from it. On MNIST-1D, whose data config holds a
list (`padding`), a fused group once hashed that list as OmegaConf's ListConfig and a
branch of a fused trunk was refused as "other data" (the budgets preset's branch)."""

from __future__ import annotations

from runner.data.fingerprint import fingerprint
from runner.data.sets import load_data
from runner.io import checkpoint
from schedulers.binder import plain
from tests.helpers import make_cfg, train_members

JOB = ["logger=none", "data=mnist1d", "model=cnn1d", "data.num_samples=300", "epochs=1"]


def test_a_fused_member_records_the_fingerprint_a_single_run_computes(tmp_path):
    members = train_members(tmp_path, [[*JOB, "seed=0"], [*JOB, "seed=1"]])
    values = plain(make_cfg(*JOB, "seed=0").data)
    values["root"] = str(tmp_path)  # absolute, as a run makes it (not part of the hash)
    single = fingerprint(values, load_data(values))
    for m in members:
        assert m.result is not None and m.result.status == "completed", m.error
        assert checkpoint.load(m.run_dir / "last.pt")["data"] == single
