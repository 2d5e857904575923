"""The workers of a multi-worker run (`--strategy multi-worker`): who they are, how they meet,
and how they stop together.

Meeting. TensorFlow's start of a multi-worker run (MultiWorkerMirroredStrategy's server and
coordination service) waits for every worker inside one C++ call that holds Python's global
lock: no signal handler and no Python thread runs until it returns, and it waits up to an
hour. So the workers meet first, in Python, on the ports TF_CONFIG gives them, before
TensorFlow's server takes those ports: each listens on its own, sends each other worker a
hello, and waits for theirs. That wait answers Ctrl-C and SIGTERM, and it ends after
FASTCONV_WORKER_TIMEOUT seconds naming the workers that did not answer. The hellos carry
each worker's settings, so workers started with different flags all refuse to run, naming
the flag, before TensorFlow's server starts. Its start follows at once, among workers known
to be there.

Stopping. TensorFlow's PreemptionCheckpointHandler lets workers agree on a step to save at
after one of them gets SIGTERM. The run does not use it: it answers SIGTERM alone (not
Ctrl-C, SIGUSR1, or output that cannot be written), keeps a checkpoint manager, a variable
and threads of its own beside the run's checkpoints, and ends the process from inside its
call. The run has answering points already, between blocks of steps, which every worker
reaches at the same step. There the workers gather their requests in one collective
(`agreement`): a stop asked of any of them stops them all at that step, each saving its
checkpoint and exiting with that stop's code; a checkpoint asked of one is saved by all.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

from fastconv.config import ConfigError, TrainConfig, flag_name
from fastconv.interruption import StopRequests, describe_stop

TIMEOUT_VARIABLE = "FASTCONV_WORKER_TIMEOUT"
DEFAULT_TIMEOUT = 300.0  # seconds for the other workers to start: "within a few minutes"

# Settings each worker has of its own: its paths, and the export only the chief writes.
OWN_SETTINGS = ("data_dir", "logdir", "export_dir")


class WorkersLost(Exception):
    """The other workers could not be met in time, or one was lost during the run; the
    message names them and says what is kept. Exit code WorkersLost.exit_code."""

    exit_code = 3


def cluster() -> tuple[list[str], int]:
    """The workers TF_CONFIG lists and this process's index among them (0 is the chief);
    ConfigError saying what is wrong with it."""
    config = tf_config("multi-worker")
    if config is None:
        raise ConfigError(
            "--strategy multi-worker: TF_CONFIG is not set (see docs/usage.md, Multi-worker)"
        )
    try:
        workers, task = config["cluster"]["worker"], config["task"]
        kind, index = task["type"], task["index"]
    except (KeyError, TypeError):
        text = os.environ["TF_CONFIG"]
        raise ConfigError(f"--strategy multi-worker: TF_CONFIG is not valid: {text}") from None
    if kind != "worker" or type(index) is not int or not 0 <= index < len(workers):
        raise ConfigError(
            f"--strategy multi-worker: TF_CONFIG's task {task} is not one of its "
            f"{len(workers)} workers (type worker, index 0 to {len(workers) - 1})"
        )
    for address in workers:
        port = re.fullmatch(r".+:(\d+)", str(address))
        if not port or not 0 < int(port[1]) < 65536:
            raise ConfigError(
                f"--strategy multi-worker: TF_CONFIG's worker {address!r} is not host:port "
                "(a port from 1 to 65535)"
            )
    return workers, index


def tf_config(strategy: str) -> dict | None:
    """TF_CONFIG's JSON object, or None where it is unset; ConfigError where it is not a
    JSON object, which TensorFlow's strategies would raise as they read it (even "mirrored"
    reads it)."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        config = json.loads(text)
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise ConfigError(f"--strategy {strategy}: TF_CONFIG is not a JSON object: {text}")
    return config


def own_folder(logdir: str, strategy: str) -> Path:
    """This worker's run folder: `logdir` for the chief (and a run on one machine), and
    `<logdir>/worker-N` for worker N, so no two workers write the same files."""
    index = cluster()[1] if strategy == "multi-worker" else 0
    return Path(logdir) / f"worker-{index}" if index else Path(logdir)


def lost(error: Exception, kept: str) -> WorkersLost:
    """WorkersLost for the error of a collective whose peer is gone, naming the worker that
    TensorFlow's message names (as `/job:worker/replica:0/task:N`)."""
    workers, index = cluster()
    tasks = [int(n) for n in re.findall(r"/job:worker/replica:\d+/task:(\d+)", str(error))]
    others = [n for n in tasks if n != index and n < len(workers)]
    who = f"worker {others[0]} at {workers[others[0]]}" if others else "another worker"
    return WorkersLost(f"--strategy multi-worker: lost contact with {who}; {kept}")


def timeout() -> float:
    """Seconds to wait for the other workers: FASTCONV_WORKER_TIMEOUT, or DEFAULT_TIMEOUT."""
    text = os.environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ConfigError(f"{TIMEOUT_VARIABLE}={text!r} must be a positive number of seconds")
    return seconds


def meet(
    config: TrainConfig, start_step: int, requests: StopRequests, log: Callable[[str], None]
) -> None:
    """Waits until every other worker of TF_CONFIG has said hello, and compares settings.

    Raises ConfigError for a port this worker cannot listen on, or naming the first flag
    (or the starting step, for `--resume`, or TF_CONFIG's list of workers) in which a worker
    differs from this one;
    WorkersLost when some did not answer within `timeout()`; Interrupted on a stop request.
    """
    workers, index = cluster()
    settings = {k: v for k, v in config.to_dict().items() if k not in OWN_SETTINGS}
    settings["start_step"] = start_step
    settings["cluster"] = workers  # TF_CONFIG's list: the same on every worker
    hello = json.dumps({"worker": index, "settings": settings}).encode()
    seconds = timeout()
    deadline = time.monotonic() + seconds
    others = {k for k in range(len(workers)) if k != index}
    unsent, heard = set(others), {}  # the hellos not yet sent; those received, by worker
    with _listener(workers[index]) as listener:
        waiting_for = _named(others, workers)
        log(f"worker {index} of {len(workers)}: waiting for {waiting_for} (up to {seconds:g} s)")
        while unsent or heard.keys() != others:
            waiting_for = _named(unsent | (others - heard.keys()), workers)
            requests.check(f"while waiting for {waiting_for}")
            if time.monotonic() > deadline:
                raise WorkersLost(
                    f"--strategy multi-worker: {waiting_for} did not answer within "
                    f"{seconds:g} s ({TIMEOUT_VARIABLE}); {requests.kept}"
                )
            for k in sorted(unsent):
                if _send(workers[k], hello):
                    unsent.discard(k)
            message = _receive(listener, len(workers))
            if message is not None and message["worker"] in others:
                heard[message["worker"]] = message["settings"]
    for k, theirs in sorted(heard.items()):
        for name, value in settings.items():
            if theirs.get(name) != value:
                raise ConfigError(_mismatch(name, value, theirs.get(name), k, workers[k]))
    log(f"worker {index} of {len(workers)}: all workers met; starting TensorFlow's server")


def _named(indices, workers: list[str]) -> str:
    return ", ".join(f"worker {k} at {workers[k]}" for k in sorted(indices))


def _mismatch(name: str, ours, theirs, k: int, address: str) -> str:
    if name == "cluster":
        return (
            f"--strategy multi-worker: TF_CONFIG lists the workers {ours} here, {theirs} on "
            f"worker {k} at {address}; give every worker the same list"
        )
    if name == "start_step":
        return (
            f"--strategy multi-worker: --resume: this worker starts at step {ours}, worker {k} "
            f"at {address} at step {theirs}; resume every worker from the same run, or none"
        )
    return (
        f"--strategy multi-worker: {flag_name(name)} {ours} here, {theirs} on worker {k} at "
        f"{address}; start every worker with the same flags"
    )


def _listener(address: str) -> socket.socket:
    """A socket listening on the port of this worker's TF_CONFIG address, on every interface
    (as TensorFlow's server will)."""
    port = int(address.rpartition(":")[2])
    try:
        if socket.has_dualstack_ipv6():
            server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        else:
            server = socket.create_server(("", port))
    except OSError as error:
        why = os.strerror(error.errno) if error.errno else str(error)
        raise ConfigError(
            f"--strategy multi-worker: cannot listen on {address}, this worker's address in "
            f"TF_CONFIG ({why}; is another worker started with the same index?)"
        ) from None
    server.settimeout(0.2)  # how often the wait looks at stop requests and the clock
    return server


def _send(address: str, hello: bytes) -> bool:
    """Whether `hello` reached the worker at `address` (not yet listening: False)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2) as connection:
            connection.sendall(hello)
        return True
    except OSError:
        return False


def _receive(listener: socket.socket, n_workers: int) -> dict | None:
    """The next worker's hello, or None when none came in time or it was not one."""
    try:
        connection, _ = listener.accept()
    except TimeoutError:
        return None
    chunks = []
    with connection:
        connection.settimeout(5)
        try:
            while chunk := connection.recv(65536):
                chunks.append(chunk)
            message = json.loads(b"".join(chunks))
        except (OSError, ValueError):
            return None
    if not isinstance(message, dict) or not isinstance(message.get("settings"), dict):
        return None
    worker = message.get("worker")
    return message if type(worker) is int and 0 <= worker < n_workers else None


def agreement(strategy) -> Callable[[StopRequests], tuple[tuple[int, str] | None, bool]]:
    """A function that turns this worker's stop and checkpoint requests into the cluster's
    decision, (the stop: its exit code and cause, or None; whether to save): every worker
    calls it at the same answering point, with one collective among them, and decides alike
    from what they all sent. A stop another worker was asked for is this worker's too; one
    that arrives here after the collective waits for the next."""
    import tensorflow as tf  # here: the command line reads this module before TensorFlow

    n_workers = len(cluster()[0])

    @tf.function
    def gather(asked: tf.Tensor) -> tf.Tensor:
        def share(asked):
            return tf.distribute.get_replica_context().all_gather(asked[None], axis=0)

        return strategy.experimental_local_results(strategy.run(share, args=(asked,)))[0]

    def agree(requests: StopRequests) -> tuple[tuple[int, str] | None, bool]:
        stop = requests.stop  # what this worker sends: the decision may not see a later one
        asked = [stop[0] if stop else 0, int(requests.save_requested)]
        rows = gather(tf.constant(asked, tf.int32)).numpy()
        per_worker = rows.reshape(n_workers, -1, 2)[:, 0]  # its replicas share its row
        save = bool(per_worker[:, 1].any())
        if stop is None and (stopping := [k for k in range(n_workers) if per_worker[k, 0]]):
            k = stopping[0]
            code = int(per_worker[k, 0])
            stop = (code, f"worker {k} {describe_stop(code)}; stopped with it")
        return stop, save

    return agree
