"""Benchmark `medsynth generate`: onnxruntime (numpy samplers) vs the same weights in PyTorch + MONAI.

For each preset: seconds per slice and slices/s at the default steps, time to first slice, peak
memory, onnxruntime vs PyTorch (MONAI DDIMScheduler, same steps, same start noise) with the ratio
and the max abs difference of the outputs; then ``medsynth --help`` latency.

Weights: ``--run RUN_DIR`` (a `medsynth train` run: its EMA weights, exported here) benchmarks that
run's preset with its real weights; every other preset uses the training default architecture
(MONAI DiffusionModelUNet, channels (32, 64, 64), attention at the last level) at the preset's
matrix with random weights (MONAI zero-initialises the output layer; all weights are re-drawn),
exported in this run. Speed depends on the architecture and matrix, not on the weight values.

    python benchmarks/bench_generate.py [--run RUN_DIR] [--slices 8] [--steps 25] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsynth import __version__
from medsynth.generate import GenerateConfig, generate
from medsynth.pack import NoiseScheduleConfig, PackMetadata, load_pack, save_pack_metadata, sha256_file
from medsynth.presets import PRESETS, get_preset
from medsynth.sampling.diffusion import DiffusionSchedule, Timesteps
from medsynth.sampling.runtime import open_denoiser, physical_cores
from medsynth.sampling.samplers import Conditioning, SamplerConfig, sample
from medsynth.training.config import ModelConfig, ScheduleConfig
from medsynth.training.model import Denoiser, build_denoiser


def _random_model(preset_name: str, uses_position: bool) -> tuple[Denoiser, ScheduleConfig, tuple[str, ...]]:
    preset = get_preset(preset_name)
    model = build_denoiser(ModelConfig(use_position=uses_position), len(preset.conditions))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval(), ScheduleConfig(), preset.conditions


def _from_run(run_dir: Path) -> tuple[str, Denoiser, ScheduleConfig, tuple[str, ...]]:
    from medsynth.training.checkpoint import load_checkpoint, load_state_strict, read_run

    config, info = read_run(run_dir)
    ckpt = load_checkpoint(run_dir, need_optimizer=False)
    labels = tuple(str(x) for x in info["manifest"]["labels"])
    model = build_denoiser(config.model, len(labels))
    load_state_strict(model, ckpt.ema, "EMA", run_dir)
    return str(info["manifest"]["preset"]), model.eval(), config.schedule, labels


def _export_pack(model: Denoiser, schedule: ScheduleConfig, labels: tuple[str, ...], preset_name: str,
                 root: Path, steps: int) -> Path:
    from medsynth.export.onnx_export import export_onnx

    preset = get_preset(preset_name)
    root.mkdir(parents=True)
    export_onnx(model, root / "model.onnx", preset.matrix, schedule.num_train_timesteps, 17, "legacy")
    meta = PackMetadata(
        model_id=f"bench-{preset_name}", presets=(preset_name,), modality=preset.modality.value, matrix=preset.matrix,
        pixel_spacing_mm=preset.pixel_spacing_mm,
        physical_range=(preset.intensity.physical_low, preset.intensity.physical_high), unit=preset.intensity.unit,
        schedule=NoiseScheduleConfig(schedule.schedule, schedule.num_train_timesteps, schedule.beta_start,
                                     schedule.beta_end),
        prediction_type=schedule.prediction_type, labels=labels, null_class=len(labels),
        uses_position=model.uses_position, default_guidance=1.0, default_sampler="ddim", default_steps=steps,
        files={"model.onnx": sha256_file(root / "model.onnx")}, software_version=__version__,
    )
    save_pack_metadata(root, meta)
    return root


@torch.no_grad()
def _torch_monai(model: Denoiser, schedule: ScheduleConfig, x: torch.Tensor, labels: torch.Tensor,
                 pos: torch.Tensor | None, steps: int) -> tuple[torch.Tensor, float, Any]:
    from monai.networks.schedulers import DDIMScheduler

    sched = DDIMScheduler(**schedule.scheduler_kwargs(), clip_sample=True)
    sched.set_timesteps(steps)
    t0 = time.perf_counter()
    for t in sched.timesteps:
        out = model(x, torch.full((x.shape[0],), int(t), dtype=torch.long), labels, pos)
        x, _ = sched.step(out, int(t), x)
    return x, time.perf_counter() - t0, sched


def bench_preset(preset_name: str, model: Denoiser, schedule: ScheduleConfig, labels: tuple[str, ...],
                 steps: int, slices: int, batch: int, tmp: Path) -> dict[str, Any]:
    preset = PRESETS[preset_name]
    pack_dir = _export_pack(model, schedule, labels, preset_name, tmp / f"pack-{preset_name}", steps)
    # 1) the product path: generate() to DICOM, streaming
    tracemalloc.start()
    res = generate(GenerateConfig(preset_name, tmp / f"out-{preset_name}", slices=slices, model=pack_dir,
                                  batch_size=batch, seed=0, sampler="ddim", steps=steps, device="cpu"))
    py_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    n = res.slices
    # 2) the same weights in PyTorch with MONAI's DDIM (same steps, same batch), and our sampler on the
    #    same start noise and MONAI's own timestep pairs, for the output difference
    h, w = preset.matrix
    x_t = torch.randn((batch, 1, h, w), generator=torch.Generator().manual_seed(1))
    lab = torch.zeros(batch, dtype=torch.long)
    pos = torch.linspace(0, 1, batch) if model.uses_position else None
    # OpenMP threads spin at barriers: on a busy machine 2 torch threads can be far slower than 1,
    # so torch gets its best of 1 and all physical cores, and so does onnxruntime.
    torch_times = {}
    for n_threads in sorted({1, physical_cores()}):
        torch.set_num_threads(n_threads)
        ref, torch_times[n_threads], sched = _torch_monai(model, schedule, x_t.clone(), lab, pos, steps)
    torch_s = min(torch_times.values())
    pack = load_pack(pack_dir)
    k = sched.num_train_timesteps // sched.num_inference_steps
    ts = [int(t) for t in sched.timesteps]
    pairs = Timesteps(tuple(ts), tuple(max(t - k, -1) for t in ts))
    ort_times = {}
    for n_threads in sorted({1, physical_cores()}):
        den = open_denoiser(pack, "cpu", threads=n_threads)
        t0 = time.perf_counter()
        ours = sample(den, DiffusionSchedule.from_config(pack.metadata.schedule), pack.metadata.prediction_type,
                      x_t.numpy(),
                      Conditioning(lab.numpy(), pack.metadata.null_class, None if pos is None else pos.numpy()),
                      SamplerConfig("ddim", steps), timesteps=pairs)
        ort_times[n_threads] = time.perf_counter() - t0
        del den
    ort_s = min(ort_times.values())
    return {
        "preset": preset_name, "matrix": list(preset.matrix), "steps": steps, "batch": batch, "slices": n,
        "generate_s_per_slice": res.seconds / n, "generate_slices_per_s": n / res.seconds,
        "first_slice_s": res.first_slice_s, "python_peak_mib": py_peak / 2**20,
        "ort_sampling_s_per_slice": ort_s / batch, "torch_monai_s_per_slice": torch_s / batch,
        "torch_over_ort": torch_s / ort_s, "max_abs_diff": float(np.abs(ours - ref.numpy()).max()),
        "torch_s_by_threads": torch_times, "ort_s_by_threads": ort_times, "generate_threads": res.threads,
    }


def help_latency(repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "medsynth.cli.main", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a `medsynth train` run: benchmark its preset with its weights")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        run_preset = None
        if args.run:
            run_preset, model, schedule, labels = _from_run(args.run)
            rows.append({**bench_preset(run_preset, model, schedule, labels, args.steps, args.slices, args.batch, tmp),
                         "weights": str(args.run)})
        for name in args.presets.split(","):
            if name == run_preset:
                continue
            model, schedule, labels = _random_model(name, uses_position=get_preset(name).is_volume)
            rows.append({**bench_preset(name, model, schedule, labels, args.steps, args.slices, args.batch, tmp),
                         "weights": "random (default architecture)"})
            print(json.dumps(rows[-1]), flush=True)
    report = {"rows": rows, "help_latency_s": help_latency(), "cpu_threads": physical_cores(),
              "torch": torch.__version__}
    import onnxruntime

    report["onnxruntime"] = onnxruntime.__version__
    print(f"{'preset':<11} {'matrix':>6} {'steps':>5} {'gen s/slice':>11} {'slices/s':>8} {'1st slice':>9} "
          f"{'ort s/sl':>8} {'torch s/sl':>10} {'ratio':>5} {'max|diff|':>9} {'py peak MiB':>11}")
    for r in rows:
        print(f"{r['preset']:<11} {r['matrix'][0]:>6} {r['steps']:>5} {r['generate_s_per_slice']:>11.3f} "
              f"{r['generate_slices_per_s']:>8.2f} {r['first_slice_s']:>9.2f} {r['ort_sampling_s_per_slice']:>8.3f} "
              f"{r['torch_monai_s_per_slice']:>10.3f} {r['torch_over_ort']:>5.2f} {r['max_abs_diff']:>9.1e} "
              f"{r['python_peak_mib']:>11.1f}")
    try:
        import resource

        report["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:  # Windows
        pass
    print(f"medsynth --help: {report['help_latency_s'] * 1000:.0f} ms; max RSS {report.get('max_rss_mib', 0):.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
