"""`duplex train lm` under real torchrun processes (gloo on this CPU): two ranks update exactly as one process on
the same global batch (DDP and FSDP2), rank 0 alone writes each checkpoint, and a two-process checkpoint resumes in
one process on the same loss curve."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from benchmarks.launch import cli_command

ROOT = Path(__file__).resolve().parents[1]
CODEC = ROOT / "agent" / "weights" / "default" / "codec.safetensors"
LM = ROOT / "agent" / "weights" / "default" / "lm.safetensors"


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    return env


def run_cli(args: list[str], procs: int) -> str:
    """`python -m cli ARGS` in one process, or under torchrun with `procs` processes; its output."""
    proc = subprocess.run(cli_command(args, procs), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def train(run: Path, data: Path, steps: int, procs: int = 1, *extra: str) -> str:
    args = ["train", "lm", "--data", str(data), "--codec", str(CODEC), "--run-dir", str(run), "--steps", str(steps),
            "--batch", "4", "--frames", "16", "--save-every", "2", "--threads", "1", *extra]
    return run_cli(args, procs)


def log(run: Path, summaries: bool = False) -> list[dict]:
    entries = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [e for e in entries if bool(e.get("summary")) == summaries]


def assert_same_weights(a: Path, b: Path, tol: float = 5e-5) -> None:
    """Equal up to float summation order: the ranks' all-reduced gradients add in another order than one
    process's batch, and Adam carries the difference (seen up to 2.2e-5 after these steps); a wrong loss
    normalisation or a missed gradient differs by orders of magnitude more."""
    wa, wb = load_file(str(a / "lm.safetensors")), load_file(str(b / "lm.safetensors"))
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < tol, worst


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "synth"
    proc = subprocess.run(cli_command(["data", "synth", "--out", str(out), "--count", "12", "--seed", "5"]), cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_two_processes_update_as_one_and_resume_in_one(data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train(one, data, 4, 1, "--init", str(LM))
    out = train(two, data, 4, 2, "--init", str(LM))
    assert "DDP x 2, 2 rows per rank" in out
    assert_same_weights(one, two)
    # rank 0 alone writes: one line per save (steps 2 and 4), one log line per step
    assert [line for line in out.splitlines() if line.startswith("saved ")] == [
        f"saved {two / 'lm_train.pt'} (step 2)", f"saved {two / 'lm_train.pt'} (step 4)"]
    assert [e["step"] for e in log(two)] == [1, 2, 3, 4] and {e["world"] for e in log(two)} == {2}
    for a, b in zip(log(one), log(two)):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    # the two-process checkpoint resumes in one process: the same curve as the one-process run's own resume
    assert "written by 2 processes" in train(two, data, 6, 1)
    train(one, data, 6, 1)
    a, b = log(one)[4:], log(two)[4:]
    assert [e["step"] for e in b] == [5, 6] and {e["world"] for e in b} == {1}
    for x, y in zip(a, b):
        for key in ("loss", "text", "audio"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6)
    assert_same_weights(one, two)


def test_fsdp_shards_and_updates_as_one_process(data, tmp_path):
    one, sharded = tmp_path / "one", tmp_path / "fsdp"
    train(one, data, 2, 1, "--init", str(LM), "--lora", "4")
    out = train(sharded, data, 2, 2, "--init", str(LM), "--lora", "4", "--fsdp")
    assert "FSDP x 2" in out
    assert_same_weights(one, sharded)
    assert (sharded / "adapter.safetensors").is_file()
    # each rank holds about half of the parameters (and of the adapters' gradients and optimizer state)
    whole = log(one, summaries=True)[-1]["ranks"][0]["state_mb"]
    ranks = log(sharded, summaries=True)[-1]["ranks"]
    assert len(ranks) == 2 and all(r["state_mb"] < 0.6 * whole for r in ranks), (whole, ranks)


def distill(run: Path, teacher: Path, student: Path, data: Path, steps: int, procs: int = 1) -> str:
    args = ["train", "distill", "--teacher", str(teacher), "--student", str(student), "--data", str(data),
            "--run-dir", str(run), "--steps", str(steps), "--batch", "4", "--frames", "16", "--save-every", "2",
            "--threads", "1", "--hidden-weight", "0.5", "--lr", "1e-3"]
    return run_cli(args, procs)


def test_distillation_under_torchrun_updates_as_one_process_and_resumes_in_one(data, tmp_path):
    """`duplex train distill` under torchrun (issue 28): two DDP ranks distil the converted student exactly as one
    process does on the same global batch, rank 0 alone writes, and the two-rank checkpoint resumes in one process."""
    from tests.test_hybrid_convert import _attention_folder

    teacher, student = tmp_path / "teacher", tmp_path / "student"
    _attention_folder(teacher, vision=None, num_layers=3)
    proc = subprocess.run(cli_command(["convert", "hybrid", str(teacher), "--pattern", "MAA", "--out", str(student)]),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = tmp_path / "one", tmp_path / "two"
    distill(one, teacher, student, data, 4, 1)
    out = distill(two, teacher, student, data, 4, 2)
    assert "DDP x 2, 2 rows per rank" in out
    assert_same_weights(one, two)
    assert [line for line in out.splitlines() if line.startswith("saved ")] == [
        f"saved {two / 'distill.pt'} (step 2)", f"saved {two / 'distill.pt'} (step 4)"]
    for a, b in zip(log(one), log(two)):
        assert b["kl_text"] == pytest.approx(a["kl_text"], rel=1e-4) and b["world"] == 2
    assert "written by 2 processes" in distill(two, teacher, student, data, 6, 1)
    distill(one, teacher, student, data, 6, 1)
    for x, y in zip(log(one)[4:], log(two)[4:]):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4, abs=1e-6)
    assert_same_weights(one, two)
