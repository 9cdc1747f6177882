"""Which GPU a pod gets, from its spec, and how much power that GPU draws.

A datacentre GPU draws from about 10 W (a T4 at rest) to 1,000 W (a B200 at its limit): one
figure for every GPU is off by a factor of several. The product is rarely in the pod's
resources (`nvidia.com/gpu: 1` says nothing of which), but clusters label their GPU nodes and
pods select them, so the spec usually names it:

- GPU Feature Discovery's `nvidia.com/gpu.product` (`NVIDIA-A100-SXM4-40GB`, `Tesla-T4`,
  `NVIDIA-H100-80GB-HBM3`, with `-MIG-1g.5gb` when MIG is on), GKE's
  `cloud.google.com/gke-accelerator` (`nvidia-tesla-t4`, `nvidia-h100-80gb`), Karpenter's
  `karpenter.k8s.aws/instance-gpu-name` (`a100`, `l4`), in `nodeSelector` or in a required
  node affinity (`In`, the first value);
- else the instance type (`node.kubernetes.io/instance-type`): `p4d.24xlarge`, `a2-highgpu-1g`,
  `Standard_ND96asr_v4` and the other GPU families of AWS, Google Cloud and Azure.

MIG slices (`nvidia.com/mig-3g.40gb`) count as g/7 of a GPU: A100 and H100 have 7 compute slices.

`GPU_PRODUCTS` gives each product's board power at rest and at its limit, in W. The maximum is
the board power limit of the vendor's datasheet (TDP, or TBP for AMD). The idle figure is an
estimate, about a tenth to a seventh of the maximum, in line with what `nvidia-smi` and
`rocm-smi` commonly report for an idle board with a driver loaded; it is not a datasheet value,
and the trainer's calibrated prior replaces it by what the measurements say. A product that no
rule recognises keeps the generic 30-300 W and `resolve_gpu_product` says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuProduct:
    name: str
    idle_watts: float
    max_watts: float
    source: str


GENERIC_GPU = GpuProduct("generic", 30.0, 300.0, "CCF-style default: V100/A100 PCIe class")

# Datasheet board power limits (max_watts); idle_watts are estimates (module docstring).
GPU_PRODUCTS: tuple[GpuProduct, ...] = (
    GpuProduct("T4", 10.0, 70.0, "NVIDIA T4 datasheet: 70 W"),
    GpuProduct("L4", 16.0, 72.0, "NVIDIA L4 datasheet: 72 W"),
    GpuProduct("A10", 20.0, 150.0, "NVIDIA A10 datasheet: 150 W"),
    GpuProduct("A10G", 25.0, 300.0, "AWS G5 (NVIDIA A10G): 300 W board limit as nvidia-smi reports it"),
    GpuProduct("A30", 30.0, 165.0, "NVIDIA A30 datasheet: 165 W"),
    GpuProduct("A40", 30.0, 300.0, "NVIDIA A40 datasheet: 300 W"),
    GpuProduct("L40", 35.0, 300.0, "NVIDIA L40 datasheet: 300 W"),
    GpuProduct("L40S", 35.0, 350.0, "NVIDIA L40S datasheet: 350 W"),
    GpuProduct("RTX-6000-ADA", 25.0, 300.0, "NVIDIA RTX 6000 Ada datasheet: 300 W"),
    GpuProduct("V100-PCIE", 25.0, 250.0, "NVIDIA V100 datasheet: PCIe 250 W"),
    GpuProduct("V100-SXM2", 40.0, 300.0, "NVIDIA V100 datasheet: SXM2 300 W"),
    GpuProduct("A100-PCIE-40GB", 35.0, 250.0, "NVIDIA A100 datasheet: PCIe 40 GB 250 W"),
    GpuProduct("A100-PCIE-80GB", 45.0, 300.0, "NVIDIA A100 datasheet: PCIe 80 GB 300 W"),
    GpuProduct("A100-SXM4-40GB", 50.0, 400.0, "NVIDIA A100 datasheet: SXM4 400 W"),
    GpuProduct("A100-SXM4-80GB", 60.0, 400.0, "NVIDIA A100 datasheet: SXM4 400 W"),
    GpuProduct("H100-PCIE", 50.0, 350.0, "NVIDIA H100 datasheet: PCIe 350 W"),
    GpuProduct("H100-NVL", 60.0, 400.0, "NVIDIA H100 datasheet: NVL 400 W"),
    GpuProduct("H100-SXM", 70.0, 700.0, "NVIDIA H100 datasheet: SXM 700 W"),
    GpuProduct("H200-NVL", 70.0, 600.0, "NVIDIA H200 datasheet: NVL 600 W"),
    GpuProduct("H200-SXM", 75.0, 700.0, "NVIDIA H200 datasheet: SXM 700 W"),
    GpuProduct("B100", 100.0, 700.0, "NVIDIA HGX B100: 700 W per GPU"),
    GpuProduct("B200", 140.0, 1000.0, "NVIDIA HGX B200: 1,000 W per GPU"),
    GpuProduct("GB200", 160.0, 1200.0, "NVIDIA GB200 NVL72: 1,200 W per Blackwell GPU"),
    GpuProduct("MI210", 40.0, 300.0, "AMD Instinct MI210 datasheet: 300 W TBP"),
    GpuProduct("MI250X-GCD", 45.0, 280.0, "AMD Instinct MI250X: 560 W per module, 2 GCDs, each an amd.com/gpu"),
    GpuProduct("MI300X", 120.0, 750.0, "AMD Instinct MI300X datasheet: 750 W TBP"),
    GpuProduct("MI325X", 150.0, 1000.0, "AMD Instinct MI325X datasheet: 1,000 W TBP"),
    GpuProduct("MAX-1100", 40.0, 300.0, "Intel Data Center GPU Max 1100: 300 W"),
    GpuProduct("MAX-1550", 90.0, 600.0, "Intel Data Center GPU Max 1550: 600 W"),
    GpuProduct("FLEX-140", 12.0, 75.0, "Intel Data Center GPU Flex 140: 75 W"),
    GpuProduct("FLEX-170", 20.0, 150.0, "Intel Data Center GPU Flex 170: 150 W"),
)
PRODUCTS_BY_NAME: dict[str, GpuProduct] = {p.name: p for p in GPU_PRODUCTS}

# Labels that name the GPU product itself, in order of trust.
PRODUCT_LABELS = ("nvidia.com/gpu.product", "cloud.google.com/gke-accelerator", "karpenter.k8s.aws/instance-gpu-name")
INSTANCE_TYPE_LABELS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")

_NOT_ALNUM_BEFORE = r"(?<![a-z0-9])"
_NOT_DIGIT_AFTER = r"(?![0-9])"


def _rule(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


# Product names as labels spell them, most specific first (B200 before B100, A10G before A10).
_PRODUCT_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (_rule(r"gb200"), "GB200"),
    (_rule(_NOT_ALNUM_BEFORE + r"b200"), "B200"),
    (_rule(_NOT_ALNUM_BEFORE + r"b100"), "B100"),
    (_rule(r"h200.*nvl|nvl.*h200"), "H200-NVL"),
    (_rule(r"h200"), "H200-SXM"),
    (_rule(r"h100.*pcie|pcie.*h100"), "H100-PCIE"),
    (_rule(r"h100.*nvl|nvl.*h100"), "H100-NVL"),
    (_rule(r"h100"), "H100-SXM"),
    (_rule(r"a100.*pcie.*80|a100.*80.*pcie|pcie.*a100.*80"), "A100-PCIE-80GB"),
    (_rule(r"a100.*pcie|pcie.*a100"), "A100-PCIE-40GB"),
    (_rule(r"a100.*80"), "A100-SXM4-80GB"),
    (_rule(r"a100"), "A100-SXM4-40GB"),
    (_rule(_NOT_ALNUM_BEFORE + r"a10g"), "A10G"),
    (_rule(_NOT_ALNUM_BEFORE + r"a10" + _NOT_DIGIT_AFTER), "A10"),
    (_rule(_NOT_ALNUM_BEFORE + r"a30" + _NOT_DIGIT_AFTER), "A30"),
    (_rule(_NOT_ALNUM_BEFORE + r"a40" + _NOT_DIGIT_AFTER), "A40"),
    (_rule(_NOT_ALNUM_BEFORE + r"l40s"), "L40S"),
    (_rule(_NOT_ALNUM_BEFORE + r"l40" + _NOT_DIGIT_AFTER), "L40"),
    (_rule(_NOT_ALNUM_BEFORE + r"l4" + _NOT_DIGIT_AFTER), "L4"),
    (_rule(_NOT_ALNUM_BEFORE + r"t4" + _NOT_DIGIT_AFTER), "T4"),
    (_rule(r"v100.*pcie|pcie.*v100"), "V100-PCIE"),
    (_rule(r"v100"), "V100-SXM2"),
    (_rule(r"rtx.?6000.?ada"), "RTX-6000-ADA"),
    (_rule(r"mi325"), "MI325X"),
    (_rule(r"mi300"), "MI300X"),
    (_rule(r"mi250"), "MI250X-GCD"),
    (_rule(r"mi210"), "MI210"),
    (_rule(r"max.?1550"), "MAX-1550"),
    (_rule(r"max.?1100"), "MAX-1100"),
    (_rule(r"flex.?170"), "FLEX-170"),
    (_rule(r"flex.?140"), "FLEX-140"),
)

# GPU instance families of the three large clouds -> the GPU they carry.
_INSTANCE_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # AWS
    (_rule(r"^p6-b200\."), "B200"),
    (_rule(r"^p5e[n]?\."), "H200-SXM"),
    (_rule(r"^p5\."), "H100-SXM"),
    (_rule(r"^p4de\."), "A100-SXM4-80GB"),
    (_rule(r"^p4d\."), "A100-SXM4-40GB"),
    (_rule(r"^p3(dn)?\."), "V100-SXM2"),
    (_rule(r"^g6e\."), "L40S"),
    (_rule(r"^g6\."), "L4"),
    (_rule(r"^g5\."), "A10G"),
    (_rule(r"^g4dn\."), "T4"),
    # Google Cloud
    (_rule(r"^a4-highgpu-"), "B200"),
    (_rule(r"^a3-ultragpu-"), "H200-SXM"),
    (_rule(r"^a3-(high|mega|edge)gpu-"), "H100-SXM"),
    (_rule(r"^a2-ultragpu-"), "A100-SXM4-80GB"),
    (_rule(r"^a2-(high|mega)gpu-"), "A100-SXM4-40GB"),
    (_rule(r"^g2-standard-"), "L4"),
    # Azure
    (_rule(r"^standard_nd96isr_h200_v5$"), "H200-SXM"),
    (_rule(r"^standard_nd96isr_h100_v5$"), "H100-SXM"),
    (_rule(r"^standard_nc\d+ads_h100_v5$"), "H100-NVL"),
    (_rule(r"^standard_nd96amsr_a100_v4$"), "A100-SXM4-80GB"),
    (_rule(r"^standard_nd96asr_(a100_)?v4$"), "A100-SXM4-40GB"),
    (_rule(r"^standard_nc\d+ads_a100_v4$"), "A100-PCIE-80GB"),
    (_rule(r"^standard_nc\d+as_t4_v3$"), "T4"),
    (_rule(r"^standard_nv\d+ads_a10_v5$"), "A10"),
    (_rule(r"^standard_nd96isr_mi300x_v5$"), "MI300X"),
    (_rule(r"^standard_nc\d+s_v3$"), "V100-PCIE"),
)

_MIG_RESOURCE = re.compile(r"^nvidia\.com/mig-(\d+)g\.\d+gb$")
MIG_SLICES_PER_GPU = 7
_SHARED_SUFFIX = ".shared"
# Intel's GPU device plugin: a device is `i915` (or `xe`, its newer kernel driver's); its other
# resources are shares of one, or none (monitoring).
_INTEL_PREFIX = "gpu.intel.com/"
_INTEL_DEVICES = frozenset({"i915", "xe"})


def product_from_name(value: str) -> str | None:
    """The canonical product a label value names (`NVIDIA-A100-SXM4-40GB` -> `A100-SXM4-40GB`)."""
    text = value.strip().lower().replace("_", "-")
    for pattern, name in _PRODUCT_RULES:
        if pattern.search(text):
            return name
    return None


def product_from_instance_type(value: str) -> str | None:
    """The GPU of a cloud instance type (`p4d.24xlarge` -> `A100-SXM4-40GB`), None when not a GPU type."""
    text = value.strip().lower()
    for pattern, name in _INSTANCE_RULES:
        if pattern.search(text):
            return name
    return None


def resolve_gpu_product(node_labels: Mapping[str, str]) -> str | None:
    """The GPU product the node labels a pod selects name: canonical when a rule knows it, else
    the product label's own value (so that an unknown product is still a feature and is
    reported), else None when nothing names a GPU."""
    for key in PRODUCT_LABELS:
        value = node_labels.get(key)
        if value:
            return product_from_name(value) or value
    for key in INSTANCE_TYPE_LABELS:
        value = node_labels.get(key)
        if value:
            product = product_from_instance_type(value)
            if product:
                return product
    return None


def gpu_product(name: str | None) -> GpuProduct:
    """The table's entry for a product name, or the generic GPU."""
    if name is None:
        return GENERIC_GPU
    return PRODUCTS_BY_NAME.get(name) or PRODUCTS_BY_NAME.get(product_from_name(name) or "", GENERIC_GPU)


def gpu_fraction(resource: str) -> float | None:
    """How much of a GPU one unit of an extended resource is: 1 for a GPU, g/7 for a MIG slice,
    None for anything else. nvidia.com/gpu, amd.com/gpu, gpu.intel.com/i915, gpu.intel.com/xe, ...

    A time-sliced GPU that the device plugin renames (`renameByDefault`: `nvidia.com/gpu.shared`,
    `nvidia.com/mig-1g.5gb.shared`) counts as what it shares: how many pods share it is the
    node's configuration, not the pod's spec, so the pod is given the whole of it (an upper bound).
    Intel's resources beside its devices (`gpu.intel.com/millicores`, `memory.max`, `tiles`, and
    the monitoring ones) are not GPUs: a pod asking `millicores: 500` with one `i915` has one GPU."""
    resource = resource.removesuffix(_SHARED_SUFFIX)
    if resource.startswith(_INTEL_PREFIX):
        return 1.0 if resource[len(_INTEL_PREFIX):] in _INTEL_DEVICES else None
    if resource.endswith("/gpu"):
        return 1.0
    mig = _MIG_RESOURCE.match(resource)
    if mig:
        return min(int(mig.group(1)), MIG_SLICES_PER_GPU) / MIG_SLICES_PER_GPU
    return None
