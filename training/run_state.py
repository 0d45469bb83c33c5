"""What a seeded, resumable training run keeps and restores: seeds and RNG state, the learning-rate
schedule, checkpoints (weights, optimiser, schedule, RNG, progress, written whole or not at all) and the
mixed-precision choice. Both training stages (train.py, matcher_train.py) use these."""

from __future__ import annotations

import contextlib
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_schedule(opt: torch.optim.Optimizer, kind: str, total: int,
                warmup: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, total // 3), gamma=0.1)
    if kind != "cosine":
        raise ValueError(f"unknown schedule {kind!r}; use cosine or step")

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, **extra: Any) -> None:
    """Everything an interrupted run needs to continue exactly: weights, optimiser, schedule, RNG, progress."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "rng": _rng_state(), **extra}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any) -> dict[str, Any]:
    ck = torch.load(path, weights_only=False)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    sched.load_state_dict(ck["sched"])
    _set_rng_state(ck["rng"])
    return ck


def autocast(device: torch.device, mode: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for training where the CPU has bf16 instructions (about 1.5× faster here), else fp32."""
    if mode == "bf16" or (mode == "auto" and device.type == "cpu" and cpu_has_bf16()):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def optimiser_step(opt: torch.optim.Optimizer, sched: Any, loss: torch.Tensor, params: list[torch.nn.Parameter],
                   grad_clip: float) -> None:
    """Backward, clip the gradient norm, step the optimiser and the schedule: every training step's tail."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    sched.step()
