"""Training checkpoints that are safe to load: safetensors for tensors, JSON for everything else.

A run folder holds::

    RUN/
      config.json             the resolved TrainConfig (usable as --config)
      run.json                dataset it was trained on (manifest without per-slice data), versions
      checkpoint.safetensors  model.* (weights), ema.* (EMA weights), optim.<i>.<key> (AdamW
                              state), rng.torch (torch's CPU RNG state as uint8)
      checkpoint.json         step, cumulative training seconds, sha256 of the .safetensors file,
                              AdamW param_groups, numpy and python RNG states, ``extra`` (device,
                              precision, hardware, last loss)
      train_log.jsonl         one JSON object per logged step
      samples/step_NNNNNN.png preview grids from the EMA weights

No pickle anywhere: a checkpoint cannot execute code when loaded. A checkpoint whose sha256,
tensor names or shapes do not match is refused with :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medsynth.errors import CheckpointError
from medsynth.pack import sha256_file
from medsynth.training.config import TrainConfig, load_config_file

CHECKPOINT_FORMAT = 1
WEIGHTS_NAME = "checkpoint.safetensors"
STATE_NAME = "checkpoint.json"
CONFIG_NAME = "config.json"
RUN_INFO_NAME = "run.json"
LOG_NAME = "train_log.jsonl"


@dataclass
class CheckpointState:
    """What a checkpoint restores: tensors by group plus the JSON state."""

    step: int
    train_seconds: float
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # a torch optimizer state_dict
    torch_rng: torch.Tensor | None
    numpy_rng: Any
    python_rng: Any
    extra: dict[str, Any]


def save_checkpoint(
    run_dir: Path,
    step: int,
    train_seconds: float,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoint.safetensors`` and ``checkpoint.json`` atomically (temp names, then rename)."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("model", model), ("ema", ema)):
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v.detach().to("cpu").contiguous().clone()
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for k, v in st.items():
            if not isinstance(v, torch.Tensor):
                v = torch.tensor(v)
            tensors[f"optim.{idx}.{k}"] = v.detach().to("cpu").contiguous().clone()
    tensors["rng.torch"] = torch.get_rng_state().clone()
    wtmp = run_dir / f".{WEIGHTS_NAME}.partial"
    save_file(tensors, str(wtmp), metadata={"format": str(CHECKPOINT_FORMAT), "step": str(step)})
    np_state: Any = np.random.get_state()
    py_state = random.getstate()
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "train_seconds": train_seconds,
        "sha256": sha256_file(wtmp),
        "optimizer_param_groups": opt["param_groups"],
        "numpy_rng": [np_state[0], np.asarray(np_state[1]).tolist(), *[_plain(x) for x in np_state[2:]]],
        "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
        "extra": extra or {},
    }
    stmp = run_dir / f".{STATE_NAME}.partial"
    stmp.write_text(json.dumps(state) + "\n", encoding="utf-8")
    wtmp.replace(run_dir / WEIGHTS_NAME)
    stmp.replace(run_dir / STATE_NAME)
    return run_dir / WEIGHTS_NAME


def _plain(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


def load_checkpoint(run_dir: Path, need_optimizer: bool = True) -> CheckpointState:
    """Read and verify a run's checkpoint; CheckpointError naming the file on any problem."""
    spath = run_dir / STATE_NAME
    wpath = run_dir / WEIGHTS_NAME
    if not spath.is_file() or not wpath.is_file():
        raise CheckpointError(f"no checkpoint ({STATE_NAME} and {WEIGHTS_NAME}) in the run folder", run_dir)
    try:
        state = json.loads(spath.read_text(encoding="utf-8"))
        step = int(state["step"])
        train_seconds = float(state["train_seconds"])
        digest = str(state["sha256"])
        if int(state.get("format", 1)) > CHECKPOINT_FORMAT:
            raise CheckpointError("checkpoint format is newer than this medsynth understands", spath)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"corrupt checkpoint state ({exc.__class__.__name__}: {exc})", spath) from None
    if sha256_file(wpath) != digest:
        raise CheckpointError("corrupt checkpoint: sha256 does not match checkpoint.json", wpath)
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"corrupt checkpoint ({exc})", wpath) from None
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    if not model or not ema:
        raise CheckpointError("checkpoint holds no model/EMA weights", wpath)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = v
    optimizer = {"state": opt_state, "param_groups": state.get("optimizer_param_groups", [])}
    if need_optimizer and not optimizer["param_groups"]:
        raise CheckpointError("checkpoint state holds no optimizer parameter groups", spath)
    return CheckpointState(
        step=step,
        train_seconds=train_seconds,
        model=model,
        ema=ema,
        optimizer=optimizer,
        torch_rng=tensors.get("rng.torch"),
        numpy_rng=state.get("numpy_rng"),
        python_rng=state.get("python_rng"),
        extra=dict(state.get("extra") or {}),
    )


def restore_rng(ckpt: CheckpointState) -> None:
    """Restore torch/numpy/python global RNG states saved with the checkpoint."""
    try:
        if ckpt.torch_rng is not None:
            torch.set_rng_state(ckpt.torch_rng.to(torch.uint8))
        if ckpt.numpy_rng:
            s = ckpt.numpy_rng
            np.random.set_state((s[0], np.asarray(s[1], dtype=np.uint32), *s[2:]))
        if ckpt.python_rng:
            p = ckpt.python_rng
            random.setstate((int(p[0]), tuple(int(x) for x in p[1]), p[2]))
    except (TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise CheckpointError(f"corrupt RNG state in checkpoint ({exc})") from None


def load_state_strict(module: torch.nn.Module, weights: dict[str, torch.Tensor], what: str, path: Path) -> None:
    """``module.load_state_dict(weights)`` with a CheckpointError on any name/shape mismatch."""
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        hint = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"{what} weights do not match the run's configuration ({hint})", path) from None


def read_run(run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The run's configuration and ``run.json`` (dataset manifest, versions)."""
    if not run_dir.is_dir():
        raise CheckpointError("training run folder not found", run_dir)
    cfg_path = run_dir / CONFIG_NAME
    info_path = run_dir / RUN_INFO_NAME
    if not cfg_path.is_file() or not info_path.is_file():
        raise CheckpointError(f"not a training run (no {CONFIG_NAME}/{RUN_INFO_NAME})", run_dir)
    config = load_config_file(cfg_path)
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or "manifest" not in info:
            raise ValueError("no manifest")
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"corrupt run information ({exc})", info_path) from None
    return config, info
