"""Reading the trainer's intermediate files (labels, runs, datasets): a file that is truncated,
corrupt or not Parquet at all is an `InputFileError` naming it, never a library traceback.

Each step writes its output atomically (`webhook.files.write_atomically`), so a half-written file
comes from elsewhere: a copy cut short, a full disk on another machine, the wrong file given. The
error says which file and what the reader found, and that rerunning the step that wrote it is the
cure. `InputFileError` is a `ValueError`, so callers that already turn bad input into a one-line
error keep doing so; the `train` command group turns it into one for every step.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


class InputFileError(ValueError):
    """An input file cannot be read. The message names the file and what it should have been."""

    def __init__(self, path: str | os.PathLike[str], what: str, problem: str) -> None:
        super().__init__(f"{path}: cannot read it as {what}: {problem}")
        self.path = Path(path)


def _problem(path: Path, exc: BaseException) -> str:
    """The reader's complaint in one line, with the file's size: a truncated file shows as a
    size far below the original's."""
    size = path.stat().st_size if path.is_file() else 0
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{reason} ({size} bytes; truncated, corrupt or not Parquet: rerun the step that wrote it)"


def parquet_column_names(path: str | os.PathLike[str], what: str) -> list[str]:
    """The column names in a Parquet file's schema (its footer)."""
    try:
        return list(pq.read_schema(path).names)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputFileError(path, what, _problem(Path(path), exc)) from None


def read_parquet_input(
    path: str | os.PathLike[str],
    what: str,
    *,
    columns: Sequence[str] | None = None,
    read_dictionary: Sequence[str] | None = None,
) -> pd.DataFrame:
    """`pd.read_parquet` of a step's output; `what` names the table in the error ("a labels
    table"). Arrow checks the footer and every page it decodes, so truncation and corruption
    surface here and not later as a wrong number."""
    try:
        return pd.read_parquet(
            path,
            columns=list(columns) if columns is not None else None,
            read_dictionary=list(read_dictionary) if read_dictionary is not None else None,
        )
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputFileError(path, what, _problem(Path(path), exc)) from None


def release_arrow_memory() -> None:
    """Hand the memory Arrow's allocator kept from reading back to the system: after a large
    read it holds about as much again as what was kept (GBs at millions of rows; `read_targets`
    of 20,000 simulated workloads: 314 MiB of a 580 MiB read)."""
    pa.default_memory_pool().release_unused()
