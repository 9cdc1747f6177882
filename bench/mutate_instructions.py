"""What one cache miss costs stage by stage, in instructions: valgrind's count, which the other work
on a shared machine does not disturb (`bench.mutate_stages` times the same stages in microseconds,
which it does).

Each stage runs over the benchmark's specs inside a ctypes callback that libc's `bsearch` calls, so
`valgrind --tool=callgrind --collect-atstart=no --toggle-collect=closure_fcn --dump-after=closure_fcn`
counts only the stages, and writes one profile per stage (`closure_fcn` is ctypes' callback entry).

    python -m bench.mutate_instructions --model FILE [--specs 200] [--stages read,predict,mutate]

prints instructions per call for each stage, and keeps the profiles (`--keep DIR`) for
`callgrind_annotate`. Needs valgrind; takes a few minutes (the setup runs under valgrind too).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

STAGES = ("parse", "read", "extract", "spec_hash", "encode", "search", "predict", "mutate")


def _stage_actions(model_path: Path, specs: int) -> dict[str, Callable[[int], Any]]:
    """Each stage as an action on spec i, with its inputs made beforehand (as /mutate would have them)."""
    from bench.admission_body import review_bodies
    from webhook.admission.mutate import MutationSettings, mutate
    from webhook.admission.reading import ObjectReader, read_object
    from webhook.admission.review import parse_review
    from webhook.http.body import parse_json
    from webhook.model.extract import from_read_part, read_part, to_inference_request
    from webhook.model.prior import PriorPredictor
    from webhook.model.schema import spec_hash
    from webhook.model.service import PredictionService

    bodies = review_bodies(specs)
    objects = [json.loads(body)["request"]["object"] for body in bodies]
    decoded = [parse_review(json.loads(body)) for body in bodies]
    parts = [read_part(obj) for obj in objects]
    requests = [to_inference_request(obj) for obj in objects]
    service = PredictionService(PriorPredictor(), model_path=model_path, cache_entries=0)  # every review a miss
    if not service.load():
        raise RuntimeError(f"model not loaded: {service.status().error}")
    model = service.predictor
    encoder, knn = model.pipeline.steps[0][1], model.pipeline.steps[-1][1]
    encoded = [encoder.transform([r]) for r in requests]
    settings, reader = MutationSettings(), ObjectReader(0)  # as the server with --cache-entries 0
    return {
        "parse": lambda i: parse_json(bodies[i]),
        "read": lambda i: read_object(objects[i], reader),  # read_part, extraction and spec hash
        "extract": lambda i: from_read_part(parts[i]),
        "spec_hash": lambda i: spec_hash(requests[i]),
        "encode": lambda i: encoder.transform([requests[i]]),
        "search": lambda i: knn.predict_detail(encoded[i]),  # AnchoredKNN: search, prior, interval
        "predict": lambda i: model.predict([requests[i]]),
        "mutate": lambda i: mutate(decoded[i], service, settings, reader),  # the body already parsed
    }


def _run_counted(stages: list[str], actions: dict[str, Callable[[int], Any]], specs: int) -> None:
    """Every stage once over the specs unseen by valgrind's counters (warm-up), then once inside
    the callback it counts."""
    libc = ctypes.CDLL(None)
    compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    libc.bsearch.restype = ctypes.c_void_p
    libc.bsearch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, compare]
    key, table = ctypes.c_int(0), (ctypes.c_int * 1)(0)
    for name in stages:
        action = actions[name]
        for i in range(specs):
            action(i)

        def counted(_a: Any, _b: Any, action: Callable[[int], Any] = action) -> int:
            for i in range(specs):
                action(i)
            return 0

        libc.bsearch(ctypes.byref(key), table, 1, ctypes.sizeof(ctypes.c_int), compare(counted))


def _summary(profile: Path) -> int:
    for line in profile.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise ValueError(f"{profile}: no summary line")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="an artifact (python -m bench.model_artifact)")
    parser.add_argument("--specs", type=int, default=200, help="distinct specs, each counted once per stage")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--keep", type=Path, default=None, help="keep the callgrind profiles in this directory")
    parser.add_argument("--counted", action="store_true", help=argparse.SUPPRESS)  # the run under valgrind
    args = parser.parse_args()
    stages = args.stages.split(",")
    if unknown := set(stages) - set(STAGES):
        parser.error(f"unknown stages: {', '.join(sorted(unknown))}")
    if args.counted:
        _run_counted(stages, _stage_actions(args.model, args.specs), args.specs)
        return
    with tempfile.TemporaryDirectory(prefix="energetiscope-callgrind-") as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        command = ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=closure_fcn",
                   "--dump-after=closure_fcn", f"--callgrind-out-file={out / 'callgrind.out'}",
                   sys.executable, "-m", "bench.mutate_instructions", "--counted", "--model", str(args.model),
                   "--specs", str(args.specs), "--stages", args.stages]
        # One BLAS thread, as the server's searches run (webhook.model.arrays).
        subprocess.run(command, check=True, stderr=subprocess.DEVNULL, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
        for number, name in enumerate(stages, start=1):
            print(f"{_summary(out / f'callgrind.out.{number}') / args.specs:>12,.0f} instructions  {name}")


if __name__ == "__main__":
    main()
