"""What a stage process does around its work: the allocator keeps freed tensors' memory (no page
faults for every step's tensors), no CUDA probing per step without a GPU, a finished run leaves without the interpreter's teardown but
with its exit handlers run, threads joined and output flushed, and evaluation builds its data
without Lightning. Each in a fresh interpreter; nothing is timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO, run_module, venv_env


def fresh_python(code: str, *args: str, **options) -> subprocess.CompletedProcess:
    """``code`` run by a fresh interpreter of the project's environment, from the repository."""
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=venv_env(), cwd=REPO, **options
    )


# A 20 MiB tensor allocated and freed; glibc's own account (mallinfo2) of where it came from.
ALLOCATION = """
import ctypes, json, sys, torch
from nnlab.training.runtime import reuse_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
took = reuse_freed_memory() if sys.argv[1] == "tuned" else None
before = libc.mallinfo2().hblkhd
tensor = torch.empty(5 << 20)
held = libc.mallinfo2()
del tensor
freed = libc.mallinfo2()
print(json.dumps({"took": took, "mapped": (held.hblkhd - before) >> 20, "kept_free": freed.fordblks >> 20}))
"""


def _allocation(mode: str) -> dict:
    proc = fresh_python(ALLOCATION, mode, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_tuned_allocator_keeps_freed_tensors_memory_for_the_next_step():
    """By default glibc maps a block this large afresh (and unmaps it when freed: the next step
    takes a page fault per 4 KiB of it); tuned, it comes from the heap and stays there, free."""
    default, tuned = _allocation("default"), _allocation("tuned")
    assert default == {"took": None, "mapped": 20, "kept_free": 0}
    assert tuned["took"] is True and tuned["mapped"] == 0 and tuned["kept_free"] >= 20, tuned


# Lightning makes torch.cuda.is_available() ask NVML each time; torch's optimizers ask every step.
CUDA = """
import json, os, torch, lightning
from nnlab.training.runtime import stop_cuda_probing
calls = []
real = torch.cuda._raw_device_count_nvml
torch.cuda._raw_device_count_nvml = lambda: calls.append(1) or real()
torch.accelerator.is_available()
before = len(calls)
took = stop_cuda_probing()
calls.clear()
for _ in range(5):
    torch.accelerator.is_available()
print(json.dumps({"nvml_check": os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"), "before": before, "took": took,
                  "after": len(calls), "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}))
"""


def test_without_a_gpu_the_optimizers_per_step_cuda_check_stops_asking_nvml():
    env = venv_env()
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([sys.executable, "-c", CUDA], capture_output=True, text=True, env=env, cwd=REPO, check=True)
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["nvml_check"] == "1" and seen["before"] >= 1  # what Lightning's import does to every check
    if torch.cuda.is_available():  # a GPU machine: nothing is hidden
        assert seen["took"] is False and seen["visible"] is None
    else:
        assert seen == {**seen, "took": True, "after": 0, "visible": ""}


EXIT = """
import atexit, sys, threading, time
from pathlib import Path
from nnlab.config.process import exit_now
out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
def late():
    time.sleep(0.3)
    (out / "thread").write_text("joined")
threading.Thread(target=late).start()
print("buffered on a pipe", end="")
exit_now(3)
print("never")
"""


def test_exit_now_runs_exit_handlers_joins_threads_flushes_and_keeps_the_code(tmp_path):
    proc = fresh_python(EXIT, str(tmp_path))
    assert proc.returncode == 3
    assert proc.stdout == "buffered on a pipe"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "joined"


POOL = """
import gc
from concurrent.futures import ThreadPoolExecutor
from nnlab.config.process import exit_now
gc.disable()  # the pool below stays uncollected, as a cycle can until the next collection
class Repository:  # as MLflow's artifact repositories: a thread pool, held in a reference cycle
    def __init__(self):
        self.pool = ThreadPoolExecutor(2)
        self.handler = lambda: self
repository = Repository()
print(repository.pool.submit(sum, [1, 2]).result(), end="")
del repository
exit_now(4)
"""


def test_exit_now_does_not_wait_for_the_idle_workers_of_an_uncollected_thread_pool():
    """A training that logged a model ended with such a pool alive (MLflow downloads the model back
    to check its input example); exit_now waited on its workers for ever."""
    proc = fresh_python(POOL, timeout=60)
    assert (proc.returncode, proc.stdout) == (4, "3"), proc.stderr[-2000:]


def test_a_recorded_process_is_alive_only_while_that_very_process_runs():
    """The one answer every record (a checkpoint's writer, a run's process, a service's PID file)
    gets: a pid that runs, started when recorded; a zombie, a pid that runs no more, or one now
    naming a process started at another time is gone."""
    import os
    import socket
    import time

    from nnlab.config.process import alive, identity, start_time

    me = identity()
    assert (me["host"], me["pid"]) == (socket.gethostname(), os.getpid()) and me["started"].isdigit()
    child = subprocess.Popen(["sleep", "300"])
    started = start_time(child.pid)
    assert alive(child.pid) and alive(child.pid, started)
    assert not alive(child.pid, str(int(started) + 1))  # its pid, given to another process since
    child.kill()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not alive(child.pid)  # a zombie not yet waited for has ended
    child.wait()
    assert not alive(child.pid) and start_time(child.pid) is None
    assert not any(alive(pid) for pid in (0, -1, -os.getpgid(0)))  # never a signal to a process group


def test_a_finished_training_and_evaluation_leave_their_run_complete(project):
    """train and evaluate end through exit_now: the MLflow run is FINISHED with its metrics,
    model and test results; both exit 0 with their summaries printed."""
    import mlflow

    train = run_module(
        "nnlab.train",
        "experiment=blobs_linear",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "outputs=canonical",
        cwd=project,
    )
    assert train.returncode == 0, train.stderr[-2000:]
    assert "best val acc" in train.stdout
    evaluate = run_module("nnlab.evaluate", "experiment=blobs_linear", cwd=project)
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    assert "test accuracy" in evaluate.stdout
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FINISHED"
    assert (
        run.data.metrics["test_acc"] == json.loads((project / "metrics/blobs_linear/test.json").read_text())["test_acc"]
    )
    assert {"val_acc", "train_loss"} <= set(run.data.metrics)


@pytest.mark.parametrize("experiment", ["mnist_cnn", "blobs_linear"])
def test_evaluation_data_is_the_training_data_without_lightning(compose, experiment, tmp_path):
    """evaluate's plain_data gives the test split the training's Lightning data module holds,
    tensor for tensor, in an interpreter that never imports Lightning."""
    code = (
        "import sys, torch\n"
        "from nnlab.config.compose import compose_config\n"
        "from nnlab.data.tensors import plain_data\n"
        f"data = plain_data(compose_config(['experiment={experiment}']).data)\n"
        "data.setup('test')\n"
        "assert 'lightning' not in sys.modules, 'lightning was imported'\n"
        "x, y = data.inputs('test')\n"
        "torch.save({'x': x, 'y': y, 'kind': type(data).__name__}, sys.argv[1])\n"
    )
    out = tmp_path / "plain.pt"
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=venv_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    plain = torch.load(out, weights_only=True)
    from hydra.utils import instantiate

    module = instantiate(compose(f"experiment={experiment}").data)  # what the training uses
    module.setup("fit")
    x, y = module.inputs("test")
    assert plain["kind"] == type(module).__name__.replace("DataModule", "Data")
    assert torch.equal(plain["x"], x) and torch.equal(plain["y"], y)
