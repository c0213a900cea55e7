"""The benchmarks stay runnable (they are not timed here: `make bench` measures)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_overhead_benchmark_runs_its_quick_job():
    import bench_overhead

    payload = bench_overhead.main(["--quick", "--no-lightning"])
    result = payload["results"]["digits MLP"]
    assert result["hand"] > 0 and result["runner"] > 0
    assert payload["machine"]["cores"] >= 1


def test_fused_benchmark_runs_its_quick_sweep():
    import bench_fused

    payload = bench_fused.main(["--quick"])
    result = payload["results"]["digits MLP"]
    assert result["sweep basic"] > 0 and result["sweep fused"] > 0
    assert result["training ratio"] > 0


def test_stream_benchmark_runs_its_quick_jobs():
    import math

    import bench_stream

    payload = bench_stream.main(["--quick"])
    (job,) = payload["results"]["vs hand"].values()
    assert job["hand"] > 0 and job["runner"] > 0 and math.isfinite(job["ratio"])
    assert job["hand, longer"] > 0 and job["runner, longer"] > 0
    assert math.isfinite(job["per-epoch ratio"]) and math.isfinite(job["runner fixed s"])
    assert job["steps"]["hand"] == job["steps"]["runner"] == 2  # 128 samples, batch 64, 1 epoch
    digits = payload["results"]["digits"]
    assert digits["in memory"] > 0 and digits["streamed"] > 0 and digits["hand"] > 0
    assert all(math.isfinite(digits[k]) for k in ("streamed / in memory", "streamed / hand"))
    assert set(digits["steps"].values()) == {23}  # 1437 training digits, batch 64, 1 epoch
