"""Steady-state training throughput of every peer on the real 48,000-image split.

Each peer runs in its own process with its own thread settings (see peers.py for what a
round of each peer is: an epoch inside one long Keras `fit`, an epoch in one compiled
fastconv call, a whole epoch of the book's class). The run goes through the peers `PASSES`
times, one benchmark per peer and pass it joins; there a peer runs its untimed round(s), then
its timed rounds. The worker times each round itself and the table pools those seconds:
images/s is the work of a round over the median of the peer's timed rounds of every pass
(and, beside it, over its best round). pytest-benchmark's own statistics time the same
rounds from this side of the pipe. Compare ratios, not absolute numbers: these machines are
shared and noisy.
"""

import statistics

import pytest
from peers import PASSES, PEERS, fma_unavailable

SCHEDULE = [(n, peer) for n in range(1, PASSES + 1) for peer in PEERS if n in peer.passes]


@pytest.mark.parametrize(
    "pass_number, peer", SCHEDULE, ids=[f"{peer.name}-pass{n}" for n, peer in SCHEDULE]
)
def test_throughput(benchmark, peer_workers, record, pass_number, peer):
    if peer.kind == "fma" and (reason := fma_unavailable()):
        # The table says why its FMA column is missing; pytest lists the skip.
        record({"peer": peer.name, "label": peer.label, "kind": peer.kind, "unavailable": reason})
        pytest.skip(f"{peer.name}: {reason}")
    worker = peer_workers.get(peer.name)  # started in its first pass, kept for the later ones
    benchmark.pedantic(
        worker.run_round,
        rounds=peer.rounds,
        iterations=1,
        warmup_rounds=peer.warmup_rounds(pass_number),
    )
    seconds = worker.round_seconds[-peer.rounds :]  # this pass's timed rounds
    if pass_number == peer.passes[-1]:
        peer_workers.close(peer.name)
    # The table pools a peer's passes from these round times (report.combined).
    row = {
        "peer": peer.name,
        "label": peer.label,
        "kind": peer.kind,
        "pass": pass_number,
        "work_per_round": worker.work_per_round,
        "round_seconds": seconds,
        **worker.details,
    }
    if peer.kind not in ("matmul", "fma"):  # this pass's own figure, for JSON readers
        row["images_per_second"] = worker.work_per_round / statistics.median(seconds)
    benchmark.extra_info.update(row)
    record(row)
