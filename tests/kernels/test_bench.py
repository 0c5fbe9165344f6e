"""`python -m inkwell.kernels.bench` runs and prints int4 and FP times with their ratios side by side."""

from __future__ import annotations

import pytest
from inkwell.kernels import bench


def test_bench_prints_int4_and_fp_side_by_side(capsys):
    bench.main(["--shapes", "tiny", "--m", "1,3", "--budget", "0", "--threads", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# int4 matmul benchmark") and "device:" in out[0]
    head = ["int4 ms", "bf16 ms", "fp32 ms", "bf16/int4", "fp32/int4", "int4 mem / fp16 |"]
    assert out[1].split(" | ")[3:9] == head
    rows = [line.split(" | ") for line in out[3:]]
    assert len(rows) == 2 * len(bench.SHAPES["tiny"])
    for row in rows:
        int4_ms, fp32_ms, fp32_ratio = float(row[3]), float(row[5]), float(row[7].rstrip("x"))
        # times are printed to 1 us (0.0005 ms either way), ratios to 0.005
        low, high = (fp32_ms - 5e-4) / (int4_ms + 5e-4), (fp32_ms + 5e-4) / max(int4_ms - 5e-4, 1e-9)
        assert low - 0.005 <= fp32_ratio <= high + 0.005
        assert float(row[8].strip(" |")) <= 0.3  # int4 layout bytes over fp16 bytes at group size 128


def test_bench_rejects_unknown_shape_sets():
    with pytest.raises(SystemExit):
        bench.main(["--shapes", "llama"])
