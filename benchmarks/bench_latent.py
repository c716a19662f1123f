"""Latent packs on this machine: `medsynth generate` per stage, peak memory, and onnxruntime vs the
same weights in PyTorch, in one run.

    python benchmarks/bench_latent.py --pack src/medsynth/packs/ct-body \
        --ae-run ~/medsynth-runs/ct-body-v2/ae --latent-run ~/medsynth-runs/ct-body-v2/ldm

1. `medsynth generate --modality ct-pelvis` (the pack's defaults, 32 slices, DICOM) in a fresh
   process, 3 times: wall seconds, per-stage seconds (denoiser, decoder, DICOM write), peak RSS.
2. The same sampler loop (medsynth.sampling.series) with the network swapped: onnxruntime
   sessions vs the PyTorch modules the pack was exported from (`--slices` slices, fp32, same
   threads) after a warm-up, `--ratio-repeats` series of each interleaved: median seconds, per stage,
   and the ratios. (The torch side needs the run folders; skipped without them.)
Prints a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from medsynth.generate import GenerateConfig, generate
t0 = time.perf_counter()
r = generate(GenerateConfig(modality="ct-pelvis", out_dir=Path(sys.argv[1]), model=Path(sys.argv[2]), seed=int(sys.argv[3])))
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": time.perf_counter() - t0, "cpu_s": ru.ru_utime + ru.ru_stime, "stages": r.stage_seconds, "slices": r.slices,
                  "steps": r.steps, "guidance": r.guidance, "sampler": r.sampler,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def generate_runs(pack: Path, repeats: int) -> list[dict]:
    out = []
    for i in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            res = subprocess.run([sys.executable, "-c", CHILD, str(Path(tmp) / "out"), str(pack), str(i)],
                                 capture_output=True, text=True, check=True)
            out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def runtime_comparison(pack_dir: Path, ae_run: Path, latent_run: Path, slices: int, threads: int,
                       repeats: int = 1) -> dict:
    import torch

    from medsynth.latent.autoencoder import Decoder, load_autoencoder
    from medsynth.latent.denoiser import load_latent_denoiser
    from medsynth.pack import load_pack
    from medsynth.sampling.diffusion import DiffusionSchedule
    from medsynth.sampling.runtime import open_denoiser, open_image_model
    from medsynth.sampling.samplers import SamplerConfig
    from medsynth.sampling.series import StageTimer, sample_latent_series, series_positions

    torch.set_num_threads(threads)
    pack = load_pack(pack_dir)
    meta = pack.metadata
    spec = meta.latent
    assert spec is not None
    cfg = SamplerConfig(sampler="dpmpp-2m", steps=meta.default_steps, guidance=meta.default_guidance, clip_sample=False)
    sched = DiffusionSchedule.from_config(meta.schedule)
    shape = (spec.channels, *spec.shape)

    class TorchDen:
        previous = None

        def __init__(self) -> None:
            _, _, self.m = load_latent_denoiser(latent_run)

        def __call__(self, x, t, c, p):  # type: ignore[no-untyped-def]
            reps = x.shape[0] // self.previous.shape[0]
            prev = np.concatenate([self.previous] * reps)
            with torch.no_grad():
                return self.m(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(c), torch.from_numpy(p),
                              torch.from_numpy(prev)).numpy()

    _, ae = load_autoencoder(ae_run)
    _, info, _ = load_latent_denoiser(latent_run)
    tdec = Decoder(ae, info.get("latent_channel_mean"), info.get("latent_channel_std")).eval()  # as exported

    def torch_decode(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return tdec(torch.from_numpy(z)).numpy()

    backends = {"onnxruntime": (open_denoiser(pack, "cpu", threads), open_image_model(pack, "decoder", "cpu", threads)),
                "pytorch": (TorchDen(), torch_decode)}

    def one_series(name: str, n: int) -> dict[str, float]:
        den, dec = backends[name]
        timer = StageTimer()
        t0 = time.perf_counter()
        for _ in sample_latent_series(den, dec, sched, meta.prediction_type, cfg, label=0, null_class=meta.null_class,
                                      positions=series_positions(n, (0.0, 1.0)),
                                      start_noise=lambda k: np.random.default_rng(k).standard_normal(shape, dtype=np.float32),
                                      step_noise=lambda k: (lambda s: np.zeros(s, np.float32)),
                                      scale_factor=spec.scale_factor, timer=timer):
            pass
        return {"seconds": time.perf_counter() - t0, **{k: round(v, 2) for k, v in timer.seconds.items()}}

    for name in backends:  # warm-up: first-call allocations and (torch) lazy initialisation are not timed
        one_series(name, 2)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in backends}
    for _ in range(repeats):  # interleaved, so a change in the machine's load hits both alike
        for name in backends:
            runs[name].append(one_series(name, slices))

    def median(name: str, key: str) -> float:
        return float(np.median([r.get(key, 0.0) for r in runs[name]]))

    results: dict = {name: {k: median(name, k) for k in ("seconds", "denoiser", "decoder")} | {"runs": runs[name]}
                     for name in backends}
    results["repeats"] = repeats
    results["speedup_onnxruntime_vs_pytorch"] = median("pytorch", "seconds") / median("onnxruntime", "seconds")
    results["speedup_denoiser"] = median("pytorch", "denoiser") / median("onnxruntime", "denoiser")
    results["speedup_decoder"] = median("pytorch", "decoder") / median("onnxruntime", "decoder")
    results["speedup_per_pair"] = [p["seconds"] / o["seconds"] for o, p in zip(runs["onnxruntime"], runs["pytorch"], strict=True)]
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", type=Path, default=REPO / "src" / "medsynth" / "packs" / "ct-body")
    ap.add_argument("--ae-run", type=Path)
    ap.add_argument("--latent-run", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--ratio-repeats", type=int, default=5, help="interleaved ORT/PyTorch series (after a warm-up); medians")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    runs = generate_runs(args.pack, args.repeats)
    walls = sorted(r["wall"] for r in runs)
    med = runs[[r["wall"] for r in runs].index(walls[len(walls) // 2])]
    report: dict = {"generate_32_slices": runs, "median": med, "cpu_count": os.cpu_count(),
                    "load_average_at_start": os.getloadavg()}
    if args.ae_run and args.latent_run:
        report["runtime"] = runtime_comparison(args.pack, args.ae_run, args.latent_run, args.slices, args.threads,
                                               args.ratio_repeats)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    st = med["stages"]
    print("\n| stage | seconds (median run) |\n|---|---|")
    for k in ("denoiser", "decoder", "write"):
        print(f"| {k} | {st.get(k, 0):.1f} |")
    print(f"| **total wall** (incl. start-up) | {med['wall']:.1f} |\n| process CPU seconds | {med['cpu_s']:.1f} |\n"
          f"| peak RSS | {med['rss_mib']:.0f} MiB |\n\nload average at start: {report['load_average_at_start']}")
    if "runtime" in report:
        rt = report["runtime"]
        pairs = ", ".join(f"{r:.2f}" for r in rt["speedup_per_pair"])
        print(f"\nmedian of {rt['repeats']} interleaved runs, {args.slices} slices: onnxruntime {rt['onnxruntime']['seconds']:.1f} s "
              f"(denoiser {rt['onnxruntime']['denoiser']:.1f}, decoder {rt['onnxruntime']['decoder']:.1f}) vs PyTorch "
              f"{rt['pytorch']['seconds']:.1f} s ({rt['pytorch']['denoiser']:.1f}, {rt['pytorch']['decoder']:.1f}): "
              f"{rt['speedup_onnxruntime_vs_pytorch']:.2f}× (denoiser {rt['speedup_denoiser']:.2f}×, decoder "
              f"{rt['speedup_decoder']:.2f}×; per pair {pairs})")


if __name__ == "__main__":
    main()
