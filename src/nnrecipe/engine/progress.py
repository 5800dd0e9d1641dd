"""One progress bar for long work outside the training loop (predicting on a folder, attacking a test set,
evaluating an agent): shown on a terminal only, and gone once the work ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress(label: str, total: int, shown: bool = True) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1)`. `shown=False` where another bar is live (rich draws one at a time). Only the
    main process of a multi-process run draws it (each rank decodes its image tree, say)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from nnrecipe.engine import loop  # its console, as the run prints (and as tests capture it)
    from nnrecipe.engine.distributed import is_main_process

    if not shown or not is_main_process() or not loop.console.is_terminal:
        yield lambda n=1: None
        return
    columns = TextColumn(label), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(), TimeElapsedColumn()
    with Progress(*columns, console=loop.console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)
