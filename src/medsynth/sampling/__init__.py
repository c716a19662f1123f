"""Torch-free diffusion sampling: noise schedules and step maths (``diffusion``), sampling loops
around any denoiser callable (``samplers``) and the onnxruntime denoiser (``runtime``)."""
