"""`bench.accuracy.twin_references`: the noise between targets whose specs differ only in their
names and labels (ML.ENERGY's same server on another task), as a reference beside the served model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.accuracy import twin_references
from trainer.measurements import build_measurement_dataset, check_measurements, read_measurement_table, read_specs
from trainer.targets import build_targets


def _deployment(name: str, max_num_seqs: int) -> str:
    return f"""apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: llm, labels: {{app.kubernetes.io/instance: {name}}}}}
spec:
  selector: {{matchLabels: {{app.kubernetes.io/instance: {name}}}}}
  template:
    metadata: {{labels: {{app.kubernetes.io/instance: {name}}}}}
    spec:
      nodeSelector: {{nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}}
      containers:
      - name: vllm
        image: vllm/vllm-openai
        args: [--model, Qwen/Qwen3-14B, --max-num-seqs, '{max_num_seqs}']
        resources: {{limits: {{nvidia.com/gpu: 1}}}}
"""


def test_twins_are_predicted_by_each_other_and_the_served_model_is_scored_on_the_same_targets(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("---\n".join(
        [_deployment("chat", 16), _deployment("gpqa", 16), _deployment("bigger-batch", 256)]))
    (tmp_path / "m.csv").write_text("namespace,workload_kind,workload_name,power_watts\n"
                                    "llm,Deployment,chat,400\nllm,Deployment,gpqa,700\nllm,Deployment,bigger-batch,550\n")
    checked = check_measurements(read_measurement_table(tmp_path / "m.csv"))
    dataset, _ = build_measurement_dataset(checked, read_specs([tmp_path / "m.yaml"]).requests)
    table = build_targets(dataset)
    served = np.full(len(table.requests), 500.0)
    reference, served_on_twins = twin_references(table, served)
    assert reference.targets == served_on_twins.targets == 2  # names and labels differ; the spec does not
    assert reference.method.startswith("reference: the mean of the same spec's other measurements")
    assert reference.mae_watts == pytest.approx(300.0)  # 400 predicted 700 and 700 predicted 400
    assert served_on_twins.mae_watts == pytest.approx(150.0)  # 500 against 400 and 700
    # Without one of the twins, nothing shares its spec: no reference.
    one_of_each = np.array([r.workload_name != "gpqa" for r in table.requests])
    assert twin_references(table.subset(one_of_each), served[one_of_each]) == []
