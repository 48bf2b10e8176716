"""What the step-time model needs to know about GPUs and models, with sources.

`GPUSpec` holds a GPU's memory, memory bandwidth, dense FP16 tensor-core FLOP/s and the
bandwidth of its host link (what a swap crosses), each from the vendor's datasheet.
`ModelCompute` is what a forward pass costs, read off a model's `ModelSpec` in the one
model registry (`paged_kv.core.config.MODEL_PRESETS`): parameters (bytes to read per step,
FLOPs per token), query width and layers (attention FLOPs). Only models whose
architecture is published (``ModelSpec.source``) have one: the step-time model is fitted
to them.

Datasheet figures are peaks; the step-time model (`paged_kv.sim.timing`) scales them
by efficiencies fitted to the vLLM paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from paged_kv.core.config import MODEL_PRESETS, ModelSpec

_GB = 1e9
_TFLOPS = 1e12


@dataclass(frozen=True)
class GPUSpec:
    """One GPU's peak figures."""

    name: str
    #: device memory, bytes
    memory_bytes: int
    #: device memory bandwidth, bytes/s
    memory_bandwidth: float
    #: dense FP16/BF16 tensor-core throughput, FLOP/s (datasheets print twice this
    #: "with sparsity")
    fp16_flops: float
    #: host link bandwidth per direction, bytes/s (what a swap crosses)
    host_bandwidth: float
    #: where the figures come from
    source: str

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "memory_bandwidth", "fp16_flops", "host_bandwidth"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"GPUSpec.{name} must be positive, got {value!r}")


_A100 = "NVIDIA A100 Tensor Core GPU datasheet (2021): SXM4"
_H100 = "NVIDIA H100 Tensor Core GPU datasheet (2023): SXM5"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet/product brief (2024): SXM"

#: GPU presets. The vLLM paper ran on Google Cloud A2 instances (A100-40GB SXM4,
#: §6.1); PCIe Gen4 x16 gives 32 GB/s each way (datasheet: 64 GB/s both ways), Gen5
#: 64 GB/s each way (128 GB/s both ways).
GPU_PRESETS: Mapping[str, GPUSpec] = MappingProxyType({
    "A100-40GB": GPUSpec("A100-40GB", 40 * 2**30, 1555 * _GB, 312 * _TFLOPS, 32 * _GB,
                         f"{_A100} 40GB: HBM2 1,555 GB/s; FP16 tensor 312 TFLOPS; "
                         f"PCIe Gen4 64 GB/s"),
    "A100-80GB": GPUSpec("A100-80GB", 80 * 2**30, 2039 * _GB, 312 * _TFLOPS, 32 * _GB,
                         f"{_A100} 80GB: HBM2e 2,039 GB/s; FP16 tensor 312 TFLOPS; "
                         f"PCIe Gen4 64 GB/s"),
    "H100": GPUSpec("H100", 80 * 2**30, 3350 * _GB, 989.5 * _TFLOPS, 64 * _GB,
                    f"{_H100} 80GB: HBM3 3.35 TB/s; FP16 tensor 1,979 TFLOPS with "
                    f"sparsity (989.5 dense); PCIe Gen5 128 GB/s"),
    "H200": GPUSpec("H200", 141 * 10**9, 4800 * _GB, 989.5 * _TFLOPS, 64 * _GB,
                    f"{_H200} 141GB: HBM3e 4.8 TB/s; FP16 tensor 1,979 TFLOPS with "
                    f"sparsity (989.5 dense); PCIe Gen5 128 GB/s"),
})


#: Sequential read bandwidth of one datacenter NVMe SSD on PCIe Gen4 x4, bytes/s: the
#: Samsung PM9A3's datasheet figure, "up to 6,500 MB/s" (as the trade press reported
#: the datasheet at launch; Micron's 7400/7450 are rated 6,600-6,800 MB/s). Gen4 x4
#: itself caps at 7.9 GB/s. What a disk tier's load is charged at unless told otherwise.
NVME_READ_BANDWIDTH: float = 6.5 * _GB
NVME_READ_SOURCE = ("Samsung PM9A3 datasheet (PCIe Gen4 x4 NVMe, U.2/E1.S): sequential read "
                    "up to 6,500 MB/s")


def get_gpu(name: str | GPUSpec) -> GPUSpec:
    """The preset `GPUSpec` called `name` (a `GPUSpec` is returned as is)."""
    if isinstance(name, GPUSpec):
        return name
    try:
        return GPU_PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown GPU {name!r}; valid names: {', '.join(GPU_PRESETS)}"
        ) from None


@dataclass(frozen=True)
class ModelCompute:
    """What one forward pass of a model costs, besides its KV shape."""

    name: str
    #: parameters (weights read once per step; 2 FLOPs per parameter per token)
    num_params: float
    #: transformer layers
    num_layers: int
    #: query width: query heads x head dim (attention FLOPs per query-key pair and layer:
    #: 2 for the score and 2 for the weighted value, per element)
    hidden_size: int
    #: bytes per weight (FP16)
    weight_itemsize: int = 2
    #: where the shape comes from
    source: str = ""

    @property
    def weight_bytes(self) -> float:
        """Bytes of weights a step reads."""
        return self.num_params * self.weight_itemsize


def compute_of(spec: ModelSpec) -> ModelCompute:
    """The `ModelCompute` of `spec`, or `ValueError` when its architecture is not a
    published one (no ``source``, or widths unknown)."""
    if not spec.source or spec.num_params is None:
        raise ValueError(
            f"no published compute shape for model {spec.name!r}; known: "
            f"{', '.join(MODEL_COMPUTE)}"
        )
    return ModelCompute(spec.name, float(spec.num_params), spec.num_layers,
                        spec.q_heads * spec.head_dim, source=spec.source)


#: Compute shapes of the registry's models whose architecture is published, by name.
MODEL_COMPUTE: Mapping[str, ModelCompute] = MappingProxyType({
    name: compute_of(spec) for name, spec in MODEL_PRESETS.items() if spec.source
})


def model_compute(model: str | ModelSpec) -> ModelCompute:
    """The `ModelCompute` of a model preset (by name, or by a `ModelSpec`'s name)."""
    name = model.name if isinstance(model, ModelSpec) else model
    try:
        return MODEL_COMPUTE[str(name).lower()]
    except KeyError:
        raise ValueError(
            f"no compute shape for model {name!r}; known: {', '.join(MODEL_COMPUTE)}"
        ) from None
