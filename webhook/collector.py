"""The cyclic garbage collector's settings for a process that serves: the webhook's server and its
prediction process.

Reference counting frees nearly everything a review allocates; the cyclic collector finds next to
nothing (9 objects in 11,400 cache misses of a loaded server). It still runs: a generation-0
collection whenever 700 more container objects are alive than when it last ran, which a review
that waits for its prediction exceeds by itself, its parsed 10 KB body alive while 15 others are
parsed (a loaded server with every review a cache miss, 16 connections: 1,260 generation-0, 115
generation-1 and 10 full collections in 5 s). Each full one scans every object not frozen.
"""

from __future__ import annotations

import gc

# Generation 0's threshold: more container objects than the reviews in flight hold at once, so
# that collections come from garbage piling up, not from reviews waiting. 50,000-row model, every
# review a cache miss, wrk at 16 connections for 5 s, two rounds alternated: 2,194 and 2,202
# reviews/s at the default 700, 2,308 and 2,284 at 20,000, with no collection during the run.
YOUNG_GENERATION_THRESHOLD = 20_000


def freeze_long_lived_objects() -> None:
    """Move every object alive now out of the cyclic garbage collector's sight, and collect the
    young generation only when `YOUNG_GENERATION_THRESHOLD` objects have piled up.

    The loaded model and the imported libraries are ~150,000 tracked objects that live until the
    next reload; a full collection scans them all (~70 ms with a 50,000-row model), and that
    pause lands in the latency of whichever reviews are in flight. Frozen, they are still freed
    by reference counting when a reload drops them.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, older, oldest)
