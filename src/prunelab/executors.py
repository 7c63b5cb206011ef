"""Where a study's cells run: in this process, in N local processes, or as Ray tasks.

Every executor runs the same function, ``run_cell``, which writes its cell
atomically into the run directory; the study then reads the finished cells in
the grid's order, so the tables do not depend on the executor or on the order
in which cells finish. Base models are trained (or loaded) by the study before
any cell is handed out, and reach the workers through the run directory, which
must therefore be storage that every worker sees (a local disk for local
processes; a shared file system for a multi-node Ray cluster).
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import socket
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from prunelab.options import check_choice


@dataclass(frozen=True)
class Execution:
    """How cells are run; none of this changes a result."""

    executor: str = "local"
    workers: int = 1  # local processes (1: in this process)
    ray_address: str | None = None  # None: start a local Ray instance
    threads: int | None = None  # torch threads per cell; None: torch's threads shared out

    def __post_init__(self) -> None:
        check_choice("executor", self.executor, EXECUTORS)
        if self.workers < 1:
            raise ValueError(f"`workers` must be at least 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"`threads` must be at least 1, got {self.threads}")

    def check(self) -> None:
        """Fail before any work if the executor cannot run: no ray, no cluster."""
        if self.executor != "ray":
            return
        if importlib.util.find_spec("ray") is None:
            raise ValueError("`executor` ray needs the ray extra: pip install 'prunelab[ray]'")
        if self.ray_address is not None:
            _check_reachable(self.ray_address)

    @property
    def threads_per_cell(self) -> int:
        """Float results depend on the thread count (the order of summation), so equal
        results across executors need an equal count: Ray tasks take one CPU each."""
        if self.threads is not None:
            return self.threads
        return 1 if self.executor == "ray" else threads_per_worker(self.workers)


# A cell to run: (per-seed StudyConfig, method name, k); the work function runs one
# and raises on failure. Errors come back as one line each.
Cell = tuple
Work = Callable[..., None]


def threads_per_worker(workers: int) -> int:
    """Split this process's torch threads between the workers (at least one each).

    torch's count is the machine's cores unless ``OMP_NUM_THREADS`` (or
    ``torch.set_num_threads``) says otherwise, so the environment is respected.
    """
    return max(1, torch.get_num_threads() // workers)


def run_cells(cells: list[Cell], work: Work, execution: Execution, context: tuple) -> dict:
    """Run ``work(*context, *cell)`` for every cell; return {cell index: error line}
    for the cells that failed (after Ray's retries, for Ray)."""
    if not cells:
        return {}
    return EXECUTORS[execution.executor].run(cells, work, execution, context)


def _run_local(cells: list[Cell], work: Work, execution: Execution, context: tuple) -> dict:
    if execution.workers == 1:
        return _run_here(cells, work, execution.threads_per_cell, context)
    return _run_processes(cells, work, execution, context)


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0]


def _run_here(cells: list[Cell], work: Work, threads: int, context: tuple) -> dict:
    errors, before = {}, torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for i, cell in enumerate(tqdm(cells, desc="cells", unit="cell", disable=None)):
            try:
                work(*context, *cell)
            except Exception as err:  # one cell's failure must not cost the others
                errors[i] = _one_line(err)
    finally:
        torch.set_num_threads(before)
    return errors


def _init_process(threads: int) -> None:
    from prunelab.train import fast_cpu_math

    torch.set_num_threads(threads)
    fast_cpu_math()


def _run_processes(cells: list[Cell], work: Work, execution: Execution, context: tuple) -> dict:
    errors = {}
    spawn = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(execution.workers, mp_context=spawn, initializer=_init_process,
                             initargs=(execution.threads_per_cell,)) as pool:  # fmt: skip
        futures = {pool.submit(work, *context, *cell): i for i, cell in enumerate(cells)}
        for future in tqdm(as_completed(futures), total=len(futures), desc="cells",
                           unit="cell", disable=None):  # fmt: skip
            if future.exception() is not None:
                errors[futures[future]] = _one_line(future.exception())
    return errors


def _run_ray(cells: list[Cell], work: Work, execution: Execution, context: tuple) -> dict:
    import ray

    execution.check()
    try:
        ray.init(address=execution.ray_address, ignore_reinit_error=True,
                 include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)  # fmt: skip
    except Exception as err:
        where = execution.ray_address or "a local instance"
        raise ValueError(f"cannot reach the Ray cluster at {where}: {_one_line(err)}") from err
    # A task lost with its worker (a crash, a lost node) is run again by Ray.
    task = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=False)(_ray_task)
    threads = execution.threads_per_cell
    task = task.options(num_cpus=threads)
    pending = {task.remote(work, threads, context, cell): i for i, cell in enumerate(cells)}
    errors = {}
    with tqdm(total=len(pending), desc="cells", unit="cell", disable=None) as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                index = pending.pop(ref)
                try:
                    ray.get(ref)
                except Exception as err:
                    cause = getattr(err, "cause", None) or err
                    errors[index] = _one_line(cause)
                bar.update()
    return errors


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an address nothing listens at (Ray itself would wait for minutes)."""
    if address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot reach the Ray cluster at {address}: {err}") from err


def _ray_task(work: Work, threads: int, context: tuple, cell: Cell) -> None:
    _init_process(threads)
    work(*context, *cell)


@dataclass(frozen=True)
class ExecutorKind:
    """A registered executor: ``run(cells, work, execution, context)`` returns
    {cell index: error line}; ``describe`` is its line in ``--help``."""

    run: Callable[[list[Cell], Work, Execution, tuple], dict]
    describe: str


EXECUTORS: dict[str, ExecutorKind] = {
    "local": ExecutorKind(_run_local, "this machine, in this process or in --workers processes"),
    "ray": ExecutorKind(_run_ray, "Ray tasks on a cluster (prunelab[ray])"),
}
