"""Which machine a figure came from: CPU-second budgets buy different work on different CPUs (and a
teacher trained on another CPU differs), so every result names the CPU model it ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The vector instruction sets that decide FP32 and INT8 kernel speed (AVX2, AVX-512, VNNI, AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
    except OSError:
        pass
    return []


def machine_info(device: Any) -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device), "torch": torch.__version__}
