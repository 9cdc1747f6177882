"""What an LLM-serving container's command line says about its work.

A GPU pod's power follows what it serves as much as which GPU it has: a 235B model sharded over 8
GPUs at 256 concurrent sequences keeps them busier than an 8B model at 8. Serving engines
(vLLM, SGLang, TGI, Triton with vLLM, llama.cpp, ...) take this on the command line, so it is
in the spec. Read generically, with no table of named models:

- the model id (`--model`, `--model-path`, `--model-id`, `-m`, `vllm serve MODEL`) and the
  parameter count it states: `Llama-3.1-8B` -> 8, `Mixtral-8x22B` -> 176, `Qwen3-30B-A3B` -> 30
  with 3 active, `gpt-oss-120b` -> 120, `Llama-4-Scout-17B-16E` -> 17 with 16 experts;
  `FP8`/`INT8` (1 byte per weight), `AWQ`/`GPTQ`/`INT4`/`4bit` (half a byte), else 2;
- tensor, pipeline and data parallelism (`--tensor-parallel-size`/`-tp`/`--tp-size`/`--num-shard`,
  `--pipeline-parallel-size`/`-pp`, `--data-parallel-size`/`-dp`), expert parallelism;
- batch limits: `--max-num-seqs`, `--max-running-requests`, `--max-batch-size`,
  `--max-concurrent-requests`, `--parallel`/`-np` (llama.cpp); `--max-model-len`, `--context-length`,
  `--max-total-tokens`, `-c`/`--ctx-size`; `--max-num-batched-tokens`.

Values absent from the spec are 0: "not stated", which the model learns like any other value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from webhook.model.schema import InferenceRequest

_MODEL_FLAGS = ("--model", "--model-path", "--model-id", "--model-name", "-m", "--hf-model", "--model-repo")
_TENSOR_FLAGS = ("--tensor-parallel-size", "-tp", "--tp-size", "--tp", "--num-shard", "--tensor-parallel")
_PIPELINE_FLAGS = ("--pipeline-parallel-size", "-pp", "--pp-size", "--pp")
_DATA_FLAGS = ("--data-parallel-size", "-dp", "--dp-size", "--dp")
_BATCH_FLAGS = ("--max-num-seqs", "--max-running-requests", "--max-batch-size", "--max-concurrent-requests",
                "--parallel", "-np")
_CONTEXT_FLAGS = ("--max-model-len", "--context-length", "--max-total-tokens", "--ctx-size", "-c", "--max-seq-len")
_BATCHED_TOKEN_FLAGS = ("--max-num-batched-tokens", "--max-batch-total-tokens", "--chunked-prefill-size")
_EXPERT_FLAGS = ("--enable-expert-parallel", "--enable-ep-moe", "--expert-parallel-size", "--ep-size", "-ep")

_EXPERTS_TIMES_SIZE = re.compile(r"(?<![a-z0-9.])(\d+)x(\d+(?:\.\d+)?)b(?![a-z0-9])")
_SIZE_BILLIONS = re.compile(r"(?<![a-z0-9.])(?<!-a)(\d+(?:\.\d+)?)b(?![a-z0-9])")
_SIZE_MILLIONS = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)m(?![a-z0-9])")
_ACTIVE_BILLIONS = re.compile(r"(?<![a-z0-9])a(\d+(?:\.\d+)?)b(?![a-z0-9])")
_EXPERT_COUNT = re.compile(r"(?<![a-z0-9.])(\d+)e(?![a-z0-9])")
_ONE_BYTE = re.compile(r"(?<![a-z0-9])(fp8|int8|w8a8|8bit|q8)(?![a-z0-9])")
_HALF_BYTE = re.compile(r"(?<![a-z0-9])(awq|gptq|int4|w4a16|4bit|q4|nf4|fp4|mxfp4)")
_SERVING_WORDS = frozenset({"vllm", "sglang", "text-generation-launcher", "text-generation-inference", "tgi",
                            "llama-server", "llama.cpp", "tritonserver", "lmdeploy", "trtllm-serve", "ollama"})
# Every container of every cache miss is read here: one regex search for any serving word in the image
# and one set test for the flags cost less than a generator over each (llm_serving 8.4 -> 6.2 us on
# bench.admission_body's specs, old and new interleaved in one process).
_SERVING_IMAGE = re.compile("|".join(re.escape(word) for word in sorted(_SERVING_WORDS)))
_SERVING_FLAGS = frozenset((*_TENSOR_FLAGS, *_BATCH_FLAGS))

NUMERIC_FIELDS = (
    "llm_parameters_billions",
    "llm_active_parameters_billions",
    "llm_experts",
    "llm_bytes_per_parameter",
    "llm_tensor_parallel",
    "llm_pipeline_parallel",
    "llm_data_parallel",
    "llm_expert_parallel",
    "llm_max_sequences",
    "llm_context_tokens",
    "llm_batched_tokens",
)


@dataclass(frozen=True)
class LlmServing:
    """The serving arguments of one pod; 0 where the spec does not say."""

    model_id: str = ""
    parameters_billions: float = 0.0
    active_parameters_billions: float = 0.0
    experts: float = 0.0
    bytes_per_parameter: float = 0.0
    tensor_parallel: float = 0.0
    pipeline_parallel: float = 0.0
    data_parallel: float = 0.0
    expert_parallel: float = 0.0
    max_sequences: float = 0.0
    context_tokens: float = 0.0
    batched_tokens: float = 0.0

    def numeric(self) -> list[float]:
        return [self.parameters_billions, self.active_parameters_billions, self.experts, self.bytes_per_parameter,
                self.tensor_parallel, self.pipeline_parallel, self.data_parallel, self.expert_parallel,
                self.max_sequences, self.context_tokens, self.batched_tokens]


def _flag_values(words: Sequence[str]) -> dict[str, str]:
    """`--flag value` and `--flag=value` pairs; a flag without a value maps to ''."""
    values: dict[str, str] = {}
    for i, word in enumerate(words):
        if not word.startswith("-"):
            continue
        flag, eq, value = word.partition("=")
        if not eq:
            following = words[i + 1] if i + 1 < len(words) else ""
            value = following if following and not following.startswith("-") else ""
        values.setdefault(flag, value)
    return values


def _number(values: dict[str, str], flags: Iterable[str]) -> float:
    for flag in flags:
        text = values.get(flag)
        if text:
            try:
                number = float(text)
            except ValueError:
                continue
            if number >= 0 and number == number and number != float("inf"):
                return number
    return 0.0


def _split(words: Iterable[str]) -> list[str]:
    # `sh -c "vllm serve ... --tp 2"` arrives as one word: split it like the shell would, roughly.
    return [part for word in words for part in word.split()]


def _positional_model(words: Sequence[str]) -> str:
    """`vllm serve MODEL`, `sglang serve MODEL`: the word after `serve`."""
    if "serve" not in words:
        return ""
    for i, word in enumerate(words[:-1]):
        if word == "serve" and not words[i + 1].startswith("-"):
            return words[i + 1]
    return ""


def model_size(model_id: str) -> tuple[float, float, float, float]:
    """(parameters in billions, active parameters in billions, experts, bytes per parameter) the id states."""
    name = model_id.lower().rsplit("/", 1)[-1]
    total = active = experts = 0.0
    moe = _EXPERTS_TIMES_SIZE.search(name)
    if moe:
        experts = float(moe.group(1))
        total = experts * float(moe.group(2))
    else:
        size = _SIZE_BILLIONS.search(name)
        if size:
            total = float(size.group(1))
        else:
            millions = _SIZE_MILLIONS.search(name)
            if millions:
                total = float(millions.group(1)) / 1000
    active_match = _ACTIVE_BILLIONS.search(name)
    active = float(active_match.group(1)) if active_match else total
    expert_match = _EXPERT_COUNT.search(name)
    if expert_match and not experts:
        experts = float(expert_match.group(1))
    if not total:
        bytes_per_parameter = 0.0
    elif _HALF_BYTE.search(name):
        bytes_per_parameter = 0.5
    elif _ONE_BYTE.search(name):
        bytes_per_parameter = 1.0
    else:
        bytes_per_parameter = 2.0
    return total, active, experts, bytes_per_parameter


def llm_serving(request: InferenceRequest) -> LlmServing:
    """The LLM-serving arguments of a pod's containers (the first container that has any)."""
    for container in request.containers:
        words = _split([*(container.command or []), *(container.args or [])])
        image = container.image.lower()
        values = _flag_values(words)
        model_id = next((values[f] for f in _MODEL_FLAGS if values.get(f)), "") if values else ""
        model_id = model_id or _positional_model(words)
        serving = model_id or _SERVING_IMAGE.search(image) or not _SERVING_FLAGS.isdisjoint(values)
        if not serving:
            continue
        total, active, experts, bytes_per_parameter = model_size(model_id)
        expert_parallel = 1.0 if any(flag in values for flag in _EXPERT_FLAGS) else 0.0
        return LlmServing(
            model_id=model_id,
            parameters_billions=total,
            active_parameters_billions=active,
            experts=experts,
            bytes_per_parameter=bytes_per_parameter,
            tensor_parallel=_number(values, _TENSOR_FLAGS),
            pipeline_parallel=_number(values, _PIPELINE_FLAGS),
            data_parallel=_number(values, _DATA_FLAGS),
            expert_parallel=expert_parallel,
            max_sequences=_number(values, _BATCH_FLAGS),
            context_tokens=_number(values, _CONTEXT_FLAGS),
            batched_tokens=_number(values, _BATCHED_TOKEN_FLAGS),
        )
    return LlmServing()
