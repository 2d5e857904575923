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
    assert done.stderr == ""
    out = done.stdout
    assert "'xla': True" in out and "'conv_form': 'fused_xla'" in out, out
    shares = re.search(r"pools busy (\d+)% of the cores' time, inside XLA programs (\d+)%", out)
    assert shares, out
    busy, inside_xla = map(int, shares.groups())
    assert 0 < inside_xla <= busy <= 100, out
    # Every step runs two shards, each an XLA program with the forward and backward targets.
    rows = re.findall(r"^ +([\d.]+) +(\d+) +([\d.]+)  (\S.*)$", out, re.MULTILINE)
    calls = {name: int(count) for _, count, _, name in rows}
    assert len(rows) == 8 and all(
        name.startswith(("MatMul", "XlaCustomCallV2")) for name in list(calls)[:5]
    ), out
    assert {calls[name] for name in calls if name.startswith("XlaCustomCallV2")} == {2 * 375}, out
    totals = [float(total) for total, *_ in rows]
    assert totals == sorted(totals, reverse=True), out
