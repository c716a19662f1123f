"""ONNX export of a :class:`~medsynth.training.model.Denoiser`, its parity check, the fp16 variant.

The exported graph has the inputs of a model pack (see :mod:`medsynth.pack`): ``sample`` float32
[B, 1, H, W], ``timestep`` int64 [B], ``class_labels`` int64 [B] and, for position-conditioned
models, ``position`` float32 [B]; output ``prediction`` float32 [B, 1, H, W]. The batch axis is
dynamic, H and W are fixed to the preset's matrix. One file, no external data.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch

from medsynth.errors import ExportError
from medsynth.training.model import Denoiser

Exporter = Literal["auto", "dynamo", "legacy"]
FP32_TOLERANCE = 1e-4
# fp16 weights and activations: errors of a few 1e-3 relative to outputs of order 1 are expected.
FP16_TOLERANCE = 5e-2


@dataclass(frozen=True)
class ExportResult:
    """Which exporter wrote the file, at which opset, in how many seconds, and its ops."""

    path: Path
    exporter: str
    opset: int
    seconds: float
    uses_attention_op: bool
    fallback_reason: str = ""


def input_names(model: Denoiser) -> list[str]:
    names = ["sample", "timestep", "class_labels"]
    if model.uses_position:
        names.append("position")
    return names


def example_inputs(
    model: Denoiser, batch: int, matrix: tuple[int, int], num_train_timesteps: int, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random inputs: noise [B,C,H,W] (C = the model's image channels), timesteps over the whole schedule,
    labels incl. the null class."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, getattr(model, "image_channels", 1), *matrix), generator=g)
    t = torch.randint(0, num_train_timesteps, (batch,), generator=g)
    c = torch.randint(0, model.null_class + 1, (batch,), generator=g)
    if model.uses_position:
        return x, t, c, torch.rand((batch,), generator=g)
    return x, t, c


def export_onnx(
    model: Denoiser,
    path: Path,
    matrix: tuple[int, int],
    num_train_timesteps: int,
    opset: int,
    exporter: Exporter = "auto",
) -> ExportResult:
    """Export ``model`` (eval, fp32, CPU) to ``path``; ``auto`` tries torch.export then the tracer."""
    import time

    model = model.eval().to("cpu", torch.float32)
    args = example_inputs(model, 2, matrix, num_train_timesteps)
    names = input_names(model)
    errors: list[str] = []
    order: list[str] = ["dynamo", "legacy"] if exporter == "auto" else [exporter]
    for kind in order:
        t0 = time.perf_counter()
        if path.exists():
            path.unlink()
        try:
            _run_exporter(kind, model, args, names, path, opset)
        except Exception as exc:  # noqa: BLE001 - any exporter failure is reported (and may fall back)
            errors.append(f"{kind}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            continue
        seconds = time.perf_counter() - t0
        proto = onnx.load(str(path), load_external_data=False)
        _check_single_file(proto, path)
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as exc:
            errors.append(f"{kind}: invalid ONNX ({str(exc).splitlines()[0]})")
            continue
        ops = {n.op_type for n in proto.graph.node}
        return ExportResult(path, kind, opset, seconds, "Attention" in ops, "; ".join(errors))
    raise ExportError("ONNX export failed: " + " | ".join(errors), path)


def _run_exporter(
    kind: str, model: Denoiser, args: tuple[torch.Tensor, ...], names: list[str], path: Path, opset: int
) -> None:
    common: dict[str, Any] = {"input_names": names, "output_names": ["prediction"], "opset_version": opset}
    sink = io.StringIO()
    # torch.export logs "torchvision is not installed" warnings through the logging module.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        # The exporters are chatty (deprecation, tracer and progress messages); failures still raise.
        warnings.simplefilter("ignore")
        if kind == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=4096)
            shapes = {n: {0: batch} for n in names}
            torch.onnx.export(model, args, str(path), dynamo=True, external_data=False, dynamic_shapes=shapes,
                              verbose=False, **common)
        else:
            axes = {n: {0: "batch"} for n in [*names, "prediction"]}
            torch.onnx.export(model, args, str(path), dynamo=False, dynamic_axes=axes, **common)


def _check_single_file(proto: onnx.ModelProto, path: Path) -> None:
    from onnx.external_data_helper import uses_external_data

    for tensor in proto.graph.initializer:
        if uses_external_data(tensor):
            raise ExportError("export wrote external weight data; packs need a single .onnx file", path)


def check_parity(
    model: Denoiser,
    onnx_path: Path,
    matrix: tuple[int, int],
    num_train_timesteps: int,
    batches: tuple[int, ...] = (1, 3),
    seed: int = 1234,
) -> dict[str, Any]:
    """Run torch (fp32) and onnxruntime (CPU) on the same random inputs; report errors.

    Returns ``max_abs_error`` (over all batches), ``output_max_abs`` (scale of the outputs, which
    shows the model is not the zero-initialised untrained UNet) and the batch sizes tried.
    """
    import onnxruntime as ort

    model = model.eval().to("cpu", torch.float32)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime cannot load the exported model ({str(exc).splitlines()[0][:300]})",
                          onnx_path) from None
    names = [i.name for i in sess.get_inputs()]
    if names != input_names(model):
        raise ExportError(f"exported inputs are {names}, expected {input_names(model)}", onnx_path)
    max_err, scale = 0.0, 0.0
    for i, b in enumerate(batches):
        args = example_inputs(model, b, matrix, num_train_timesteps, seed + i)
        with torch.no_grad():
            ref = model(*args).numpy()
        out = sess.run(["prediction"], {n: a.numpy() for n, a in zip(names, args, strict=True)})[0]
        if out.shape != ref.shape:
            raise ExportError(f"ONNX output shape {out.shape} differs from torch {ref.shape} at batch {b}", onnx_path)
        max_err = max(max_err, float(np.max(np.abs(out.astype(np.float64) - ref))))
        scale = max(scale, float(np.max(np.abs(ref))))
    return {"max_abs_error": max_err, "output_max_abs": scale, "batch_sizes": list(batches),
            "onnxruntime": ort.__version__, "provider": "CPUExecutionProvider"}


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute with float32 inputs/outputs (onnxruntime.transformers.float16).

    The converter appends its input casts at the end of the graph and can emit duplicate node
    names; onnxruntime tolerates both but the ONNX checker (and other runtimes) do not, so names are
    made unique and the nodes re-sorted topologically.
    """
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # pragma: no cover - part of the onnxruntime wheel
        raise ExportError(f"fp16 conversion is unavailable ({exc})", dst) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    seen: Counter[str] = Counter()
    for node in proto.graph.node:
        seen[node.name] += 1
        if node.name and seen[node.name] > 1:
            node.name = f"{node.name}_{seen[node.name]}"
    _topological_sort(proto.graph)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"fp16 conversion produced an invalid model ({str(exc).splitlines()[0]})", dst) from None
    onnx.save(proto, str(dst))


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (Kahn).

    Hand-written: onnx has no public sorter. Inputs produced by no node (graph inputs,
    initializers, outer-scope names) count as available from the start.
    """
    nodes = list(graph.node)
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer[out] = i
    deps: list[set[int]] = [{producer[x] for x in node.input if x in producer} for node in nodes]
    users: dict[int, list[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(i)
    remaining = [len(d) for d in deps]
    ready = [i for i, r in enumerate(remaining) if r == 0]
    order: list[int] = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for u in users.get(i, []):
            remaining[u] -= 1
            if remaining[u] == 0:
                ready.append(u)
    if len(order) != len(nodes):
        raise ExportError("fp16 graph has a cycle; cannot sort it")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
