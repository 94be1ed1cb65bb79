"""benchmarks/int8.py: its self-check runs the whole measurement (fp32, INT8 on synthetic and on
real calibration images, verification, latency) on a toy task and names its results by the CPU."""

from __future__ import annotations

import json

from benchmarks.int8 import cpu_slug, main, real_sample


def test_tiny_self_check_writes_every_figure(tmp_path, capsys):
    assert main(["--tiny", "--latency-repeats", "1", "--threads", "1", "--compare-types", "--out-dir", str(tmp_path)]) == 0
    [result_file] = tmp_path.glob("int8_tiny_cpu_*.json")
    assert result_file.with_suffix(".md").exists()
    results = json.loads(result_file.read_text())
    [model] = results["models"]
    for arm in ("int8_synthetic", "int8_real"):
        assert 0.9 <= model[arm]["test_accuracy"] <= 1.0
        assert model[arm]["drop"] == model["fp32_test_accuracy"] - model[arm]["test_accuracy"]
        assert model[arm]["verification"]["status"] in ("verified", "flagged")
    assert model["size_bytes"]["int8_synthetic"] < model["size_bytes"]["onnx"]
    assert set(model["latency_ms"]) == {"safetensors", "onnx", "onnx-int8"}
    assert set(model["types"]) == {"calibration", "u8s8_7bit", "u8s8_8bit", "s8s8", "u8u8"}
    assert model["types"]["u8s8_7bit"]["test_accuracy"] == model["int8_synthetic"]["test_accuracy"]
    assert results["machine"]["threads"] == 1 and "| resnet8 |" in capsys.readouterr().out


def test_cpu_names_and_the_real_sample_are_fixed():
    assert cpu_slug("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz") == "xeon"
    assert cpu_slug("AMD EPYC 7B13") == "epyc"
    import numpy as np

    x = np.arange(100 * 4, dtype=np.uint8).reshape(100, 1, 2, 2)
    assert np.array_equal(real_sample(x, 10, seed=0), real_sample(x, 10, seed=0)) and len(real_sample(x, 500, 0)) == 100
