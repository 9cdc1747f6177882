"""Where a loaded webhook spends its CPU: py-spy samples of every thread, grouped by component.

py-spy (a sampling profiler that reads the process from outside) sees all threads, which
matters here: the webhook predicts in anyio worker threads, which cProfile and pyinstrument,
being per-thread, would miss. Each sample is attributed to the first component found walking
its stack from the innermost frame outwards; samples of threads that are only waiting (a worker
blocked on its queue, the loop in epoll) are counted as idle and left out of the shares.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# (component, substrings of a frame "function (file:line)"); checked in this order for each frame.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("KNN neighbour search (BruteForceIndex / sklearn kneighbors)", ("kneighbors", "ArgKmin", "BruteForceIndex")),
    ("feature encoding (PodFeatureEncoder)", ("PodFeatureEncoder",)),
    ("rest of the prediction (TrainedModel.predict)", ("TrainedModel.predict", "predict_detail")),
    ("planning the review (MutatingHandler, annotations patch)", ("MutatingHandler", "PendingMutation", "annotations_patch")),
    ("spec hash (model_dump + json + sha256)", ("spec_hash",)),
    ("object -> InferenceRequest (ObjectReader: read_part + digest; extract on a miss)",
     ("ObjectReader", "read_part", "to_inference_request")),
    ("annotations.render", ("annotations.py",)),
    ("request JSON parse (msgspec)", ("parse_json (webhook/http/body.py",)),
    ("response JSON encode (ReviewResponse, JSONResponse)", ("ReviewResponse.", "JSONResponse.render", "JSONResponse.__init__")),
    ("thread hand-off (anyio.to_thread, loop wake-ups)", ("_write_to_self", "_read_from_self", "call_soon_threadsafe",
                                                          "queue.py", "Condition.notify", "run_sync_in_worker_thread",
                                                          "to_thread.py", "CapacityLimiter")),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("TLS and socket I/O", ("ssl.py", "sslproto.py", "selector_events.py")),
    ("HTTP parsing and framing (httptools, uvicorn)", ("h11/", "httptools", "uvicorn/protocols")),
    ("Starlette routing and middleware", ("starlette/",)),
    # uvloop runs the loop, TLS and sockets in C: py-spy sees their time in the loop's frames.
    ("event loop, TLS and sockets in uvloop (C)", ("uvloop", "asyncio/", "anyio/")),
)
IDLE_LEAVES = ("Condition.wait", "EpollSelector.select", "Event.wait (threading.py", "Thread.join", "sleep")
_LINE_NUMBER = re.compile(r":\d+\)$")


@dataclass(frozen=True)
class ProfileShare:
    component: str
    share: float  # of the non-idle samples


@dataclass(frozen=True)
class Profile:
    samples: int
    idle_samples: int
    shares: list[ProfileShare]
    folded_path: str


def py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("py-spy is not installed: pip install py-spy (the bench extra)")
    return found


def start_recording(pid: int, seconds: int, folded_path: Path, rate_hz: int = 100, *extra: str) -> subprocess.Popen[bytes]:
    """py-spy record in the background (blocking mode: consistent stacks, at a small cost to the server)."""
    return subprocess.Popen([py_spy(), "record", "-p", str(pid), "-d", str(seconds), "-r", str(rate_hz), "-f", "raw",
                             "-o", str(folded_path)] + list(extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _component(frames: list[str]) -> str:
    if frames and any(_LINE_NUMBER.sub(")", frames[-1]).startswith(leaf) for leaf in IDLE_LEAVES):
        return "idle"
    for frame in reversed(frames):
        for component, needles in COMPONENTS:
            if any(needle in frame for needle in needles):
                return component
    return "other (interpreter, GC, uncategorised)"


def summarise(folded_path: Path) -> Profile:
    counts: Counter[str] = Counter()
    for line in folded_path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        counts[_component(stack.split(";"))] += int(number)
    idle = counts.pop("idle", 0)
    busy = sum(counts.values())
    shares = [ProfileShare(name, round(n / busy, 4)) for name, n in counts.most_common()] if busy else []
    return Profile(samples=busy + idle, idle_samples=idle, shares=shares, folded_path=folded_path.name)
