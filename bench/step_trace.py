"""Where a training step's time goes: one epoch of the trainer's compiled loop under
TensorFlow's profiler, read back through xprof's trace-viewer converter.

    python bench/step_trace.py                 # the default graph path
    python bench/step_trace.py --xla           # --xla: each shard an XLA program
    python bench/step_trace.py --precision mixed_bfloat16 --batch-size 512

The trainer is built as `pytest bench/` builds it (bench/peers.py: the real training split,
a run's shards and threads) and runs a few epochs untraced first. Printed: the traced
epoch's wall; how busy the threads' pools were, as a share of the cores' time over that wall
(and the share spent inside XLA programs); then the ops, XLA instructions and custom calls
that took the most time, summed over every step and thread. Not part of `pytest bench/`.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

from fastconv.importing import import_tensorflow

import_tensorflow()  # quietly; it runs no op, so peers can still set the run's threads

import peers  # noqa: E402

from fastconv.config import ConfigError  # noqa: E402
from fastconv.machine import cpu_cores  # noqa: E402

# A thread pool's work, and an XLA program's run, as the trace names them.
POOL_BUSY = "ThreadpoolListener::Region"
INSIDE_XLA = "CpuExecutable::ExecuteAsyncOnStream"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--xla", action="store_true", help="trace --xla's step")
    parser.add_argument("--precision", default="float32", help="the run's --precision (float32)")
    parser.add_argument(
        "--batch-size", type=int, default=peers.BATCH_SIZE, help="images a step (the book's)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untraced epochs first (3)")
    parser.add_argument("--top", type=int, default=20, help="the names to list (20)")
    args = parser.parse_args(argv)
    for flag, least in (("warmup", 0), ("top", 1)):
        if (value := getattr(args, flag)) < least:
            parser.error(f"--{flag} {value}: must be at least {least}")
    # Before TensorFlow's first op: it sets the run's threads.
    try:
        run_epoch, _, details = peers.fastconv_epoch(
            xla=args.xla, batch_size=args.batch_size, precision=args.precision
        )
    except ConfigError as error:  # fastconv's own checks: batch size, precision
        parser.error(str(error))
    for _ in range(args.warmup):
        run_epoch()
    wall, events = traced(run_epoch)

    seconds = collections.defaultdict(float)
    calls = collections.Counter()
    for event in events:
        seconds[event["name"]] += event["dur"] / 1e6
        calls[event["name"]] += 1
    cores = cpu_cores()
    busy, inside_xla = (seconds[name] / (wall * cores) for name in (POOL_BUSY, INSIDE_XLA))
    print(f"{details} | one epoch traced: {wall:.3f} s wall, {cores} cores")
    print(
        f"threads' pools busy {busy:.0%} of the cores' time, inside XLA programs {inside_xla:.0%}"
    )
    print(f"{'total ms':>9} {'calls':>6} {'ms/call':>8}  name")
    work = sorted((name for name in seconds if _is_work(name)), key=seconds.get, reverse=True)
    for name in work[: args.top]:
        total = seconds[name] * 1e3
        print(f"{total:9.1f} {calls[name]:6d} {total / calls[name]:8.3f}  {name}")


def traced(run_epoch) -> tuple[float, list[dict]]:
    """The wall seconds of one `run_epoch()` under the profiler, and its trace's complete
    events ("X": a name, a start and a duration in microseconds)."""
    import tensorflow as tf
    from xprof.convert import raw_to_tool_data

    with tempfile.TemporaryDirectory(prefix="fastconv-trace-") as folder:
        tf.profiler.experimental.start(folder)
        start = time.perf_counter()
        run_epoch()
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        (xspace,) = Path(folder).rglob("*.xplane.pb")
        data, _ = raw_to_tool_data.xspace_to_tool_data([str(xspace)], "trace_viewer", {})
    return wall, [e for e in json.loads(data)["traceEvents"] if e.get("ph") == "X"]


def _is_work(name: str) -> bool:
    """An op, an XLA instruction or a custom call, not the runtime's frames around them
    (the executor, the pools, the eager call of the whole loop)."""
    return "::" not in name and "Execute" not in name and name != "train"


if __name__ == "__main__":
    main()
