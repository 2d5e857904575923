"""bench/step_trace.py as its user runs it: --xla's step traced on the real data, its threads'
busy share and the names that took the time."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.needs_fused_op
def test_an_xla_epoch_traced_shows_its_programs_and_their_custom_calls(fashion_mnist):
    command = [sys.executable, "bench/step_trace.py", "--xla", "--warmup", "0", "--top", "8"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    out = done.stdout
    assert "'xla': True" in out and "'conv_form': 'fused_xla'" in out, out
    shares = re.search(r"pools busy (\d+)% of the cores' time, inside XLA programs (\d+)%", out)
    assert shares, out
    busy, inside_xla = map(int, shares.groups())
    assert 0 < inside_xla <= busy <= 100, out
    rows = re.findall(r"^ +([\d.]+) +(\d+) +([\d.]+)  (\S.*)$", out, re.MULTILINE)
    assert len(rows) == 8, out
    totals = [float(total) for total, *_ in rows]
    assert totals == sorted(totals, reverse=True), out
    # Each step runs its shards, each an XLA program calling the forward and the backward
    # target once: among the names that took the most time, with a call a shard-step.
    calls = {name: int(count) for _, count, _, name in rows}
    shards = int(re.search(r"'shards': (\d+)", out)[1])
    targets = [name for name in calls if name.startswith("XlaCustomCallV2")]
    assert len(targets) == 2 and {calls[name] for name in targets} == {shards * 375}, out
    assert all("::" not in name for name in calls), out  # the runtime's frames are left out
