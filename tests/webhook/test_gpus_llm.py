"""The GPU a spec selects (labels, affinity, instance types, MIG) and what an LLM server's arguments say."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from webhook.model.extract import to_inference_request
from webhook.model.gpus import GENERIC_GPU, gpu_fraction, gpu_product, product_from_instance_type, product_from_name
from webhook.model.llm import llm_serving, model_size
from webhook.model.prior import PriorPredictor

SHARED = Path(__file__).resolve().parents[3] / "shared"


@pytest.mark.parametrize(("label", "product"), [
    ("NVIDIA-A100-SXM4-40GB", "A100-SXM4-40GB"), ("NVIDIA-A100-SXM4-80GB", "A100-SXM4-80GB"),
    ("NVIDIA-A100-PCIE-40GB", "A100-PCIE-40GB"), ("NVIDIA-A100-80GB-PCIe", "A100-PCIE-80GB"),
    ("NVIDIA-H100-80GB-HBM3", "H100-SXM"), ("NVIDIA-H100-PCIe", "H100-PCIE"), ("NVIDIA-H100-NVL", "H100-NVL"),
    ("NVIDIA-B200", "B200"), ("Tesla-T4", "T4"), ("NVIDIA-L4", "L4"), ("NVIDIA-L40S", "L40S"), ("NVIDIA-A10G", "A10G"),
    ("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "A100-SXM4-40GB"), ("Tesla-V100-SXM2-16GB", "V100-SXM2"),
    ("nvidia-tesla-t4", "T4"), ("nvidia-l4", "L4"), ("nvidia-tesla-a100", "A100-SXM4-40GB"),
    ("nvidia-a100-80gb", "A100-SXM4-80GB"), ("nvidia-h100-mega-80gb", "H100-SXM"), ("nvidia-h200-141gb", "H200-SXM"),
    ("a100", "A100-SXM4-40GB"), ("a10g", "A10G"), ("l40s", "L40S"), ("t4", "T4"),
    ("AMD-Instinct-MI300X", "MI300X"), ("Intel-Data-Center-GPU-Max-1550", "MAX-1550"),
])
def test_product_labels_name_the_product(label: str, product: str) -> None:
    assert product_from_name(label) == product


@pytest.mark.parametrize(("instance_type", "product"), [
    ("p4d.24xlarge", "A100-SXM4-40GB"), ("p4de.24xlarge", "A100-SXM4-80GB"), ("p5.48xlarge", "H100-SXM"),
    ("p5en.48xlarge", "H200-SXM"), ("g5.xlarge", "A10G"), ("g6.2xlarge", "L4"), ("g6e.12xlarge", "L40S"),
    ("g4dn.xlarge", "T4"), ("a2-highgpu-1g", "A100-SXM4-40GB"), ("a2-ultragpu-8g", "A100-SXM4-80GB"),
    ("a3-highgpu-8g", "H100-SXM"), ("g2-standard-8", "L4"), ("Standard_ND96asr_v4", "A100-SXM4-40GB"),
    ("Standard_ND96amsr_A100_v4", "A100-SXM4-80GB"), ("Standard_ND96isr_H100_v5", "H100-SXM"),
    ("Standard_NC24ads_A100_v4", "A100-PCIE-80GB"), ("Standard_NC4as_T4_v3", "T4"),
    ("m5.xlarge", None), ("n2-standard-8", None), ("Standard_D4s_v5", None),
])
def test_instance_types_name_their_gpu(instance_type: str, product: str | None) -> None:
    assert product_from_instance_type(instance_type) == product


def test_unknown_products_keep_the_generic_gpu_and_mig_slices_are_fractions() -> None:
    assert product_from_name("Acme-Tensor-9000") is None
    assert gpu_product("Acme-Tensor-9000") is GENERIC_GPU and gpu_product(None) is GENERIC_GPU
    assert gpu_fraction("nvidia.com/gpu") == 1.0 and gpu_fraction("amd.com/gpu") == 1.0
    assert gpu_fraction("gpu.intel.com/i915") == 1.0
    assert gpu_fraction("nvidia.com/mig-3g.40gb") == pytest.approx(3 / 7)
    assert gpu_fraction("nvidia.com/mig-7g.80gb") == 1.0
    assert gpu_fraction("example.com/fpga") is None


def _gpu_deployment(pod_spec_update: dict) -> dict:  # type: ignore[type-arg]
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "llm", "namespace": "ml"},
        "spec": {"template": {"spec": {"containers": [{
            "name": "vllm", "image": "vllm/vllm-openai:v0.11.0",
            "args": ["--model", "meta-llama/Llama-3.1-70B-Instruct", "--tensor-parallel-size=4", "--max-num-seqs", "64"],
            "resources": {"limits": {"nvidia.com/gpu": "4"}}}]}}},
    }
    deployment["spec"]["template"]["spec"].update(copy.deepcopy(pod_spec_update))
    return deployment


def test_extraction_reads_the_product_from_selectors_affinity_and_instance_type() -> None:
    selected = to_inference_request(_gpu_deployment({"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}))
    assert (selected.gpu_product, selected.gpu_count) == ("H100-SXM", 4.0)
    affinity = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "cloud.google.com/gke-accelerator", "operator": "In",
                               "values": ["nvidia-l4", "nvidia-tesla-t4"]}]}]}}}}
    assert to_inference_request(_gpu_deployment(affinity)).gpu_product == "L4"
    by_instance = to_inference_request(_gpu_deployment({"nodeSelector": {"node.kubernetes.io/instance-type": "p4d.24xlarge"}}))
    assert (by_instance.gpu_product, by_instance.instance_type) == ("A100-SXM4-40GB", "p4d.24xlarge")
    unknown = to_inference_request(_gpu_deployment({"nodeSelector": {"nvidia.com/gpu.product": "Acme-Tensor-9000"}}))
    assert unknown.gpu_product == "Acme-Tensor-9000"
    assert to_inference_request(_gpu_deployment({})).gpu_product is None
    mig = _gpu_deployment({})
    mig["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/mig-2g.20gb": "2"}}
    assert to_inference_request(mig).gpu_count == pytest.approx(4 / 7)


def test_the_prior_follows_the_product_the_spec_selects() -> None:
    prior = PriorPredictor()
    h100 = prior.predict_one(to_inference_request(_gpu_deployment({"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}})))
    t4 = prior.predict_one(to_inference_request(_gpu_deployment({"nodeSelector": {"nvidia.com/gpu.product": "Tesla-T4"}})))
    assert h100.power_watts > 5 * t4.power_watts
    assert h100.power_watts == pytest.approx(4 * (70 + 0.5 * 630), rel=0.01)


@pytest.mark.parametrize(("model_id", "expected"), [
    ("meta-llama/Llama-3.1-8B-Instruct", (8, 8, 0, 2)),
    ("mistralai/Mixtral-8x22B-Instruct-v0.1", (176, 176, 8, 2)),
    ("Qwen/Qwen3-30B-A3B-Instruct-2507", (30, 3, 0, 2)),
    ("Qwen/Qwen3-235B-A22B-Instruct-2507-FP8", (235, 22, 0, 1)),
    ("openai/gpt-oss-120b", (120, 120, 0, 2)),
    ("meta-llama/Llama-4-Scout-17B-16E-Instruct", (17, 17, 16, 2)),
    ("TheBloke/Llama-2-13B-chat-AWQ", (13, 13, 0, 0.5)),
    ("Qwen/Qwen2.5-0.5B-Instruct", (0.5, 0.5, 0, 2)),
    ("gpt2", (0, 0, 0, 0)),
])
def test_model_ids_state_their_size(model_id: str, expected: tuple) -> None:  # type: ignore[type-arg]
    assert model_size(model_id) == pytest.approx(expected)


def test_serving_arguments_of_vllm_sglang_tgi_and_llama_cpp() -> None:
    vllm = to_inference_request(_gpu_deployment({}))
    serving = llm_serving(vllm)
    assert (serving.model_id, serving.parameters_billions, serving.tensor_parallel, serving.max_sequences) == (
        "meta-llama/Llama-3.1-70B-Instruct", 70, 4, 64)
    sglang = _gpu_deployment({})
    sglang["spec"]["template"]["spec"]["containers"][0].update(
        image="lmsysorg/sglang:latest", command=["python3", "-m", "sglang.launch_server"],
        args=["--model-path", "Qwen/Qwen2.5-7B-Instruct", "--tp", "2", "--max-running-requests", "128"])
    assert llm_serving(to_inference_request(sglang)).numeric()[:9] == [7, 7, 0, 2, 2, 0, 0, 0, 128]
    tgi = _gpu_deployment({})
    tgi["spec"]["template"]["spec"]["containers"][0].update(
        image="ghcr.io/huggingface/text-generation-inference:3.0", args=["--model-id", "bigcode/starcoder2-15b",
                                                                          "--num-shard", "2"])
    assert llm_serving(to_inference_request(tgi)).tensor_parallel == 2
    llama = _gpu_deployment({})
    llama["spec"]["template"]["spec"]["containers"][0].update(
        image="ghcr.io/ggml-org/llama.cpp:server", args=["-m", "/models/mistral-7b-instruct.Q4_K_M.gguf", "-c", "8192",
                                                          "-np", "4"])
    served = llm_serving(to_inference_request(llama))
    assert (served.parameters_billions, served.context_tokens, served.max_sequences) == (7, 8192, 4)
    shell = _gpu_deployment({})
    shell["spec"]["template"]["spec"]["containers"][0].update(
        command=["sh", "-c"], args=["vllm serve Qwen/Qwen3-8B --tensor-parallel-size 1 --max-num-seqs 32"])
    assert llm_serving(to_inference_request(shell)).model_id == "Qwen/Qwen3-8B"
    plain = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
             "spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}}}}
    assert llm_serving(to_inference_request(plain)).numeric() == [0.0] * 11


@pytest.mark.skipif(not (SHARED / "data" / "mlenergy" / "manifests.yaml").is_file(), reason="../shared/data/mlenergy absent")
def test_every_mlenergy_deployment_gets_its_gpu_product_and_serving_arguments() -> None:
    documents = list(yaml.safe_load_all((SHARED / "data" / "mlenergy" / "manifests.yaml").read_text()))
    requests = [to_inference_request(d) for d in documents]
    assert {r.gpu_product for r in requests} == {"A100-SXM4-40GB", "H100-SXM", "B200"}
    for request in requests:
        serving = llm_serving(request)
        assert serving.parameters_billions > 0 and serving.max_sequences > 0 and serving.tensor_parallel >= 1
        assert request.gpu_count >= 1
