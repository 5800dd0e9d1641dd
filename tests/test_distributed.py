"""Multi-process training through torchrun (PyTorch DDP via Accelerate, gloo on CPU): one run directory,
one set of metrics and checkpoints written by rank 0, gradients synchronised, a model that learns."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import torch

from nnrecipe.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _history(run: Path) -> list[tuple[float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["train_loss"], r["val_loss"]) for r in rows]


def test_two_processes_train_one_run_and_two_nodes_give_the_same_history(tmp_path):
    """`nnrecipe train --nproc 2` (torchrun, one node): one run directory, metrics written once by rank 0, a
    model that learns. Then `--nnodes 2 --node-rank R --master 127.0.0.1:PORT` (c10d rendezvous), one process
    per "node", gives the same loss history."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    epochs = 15
    base = [sys.executable, "-m", "nnrecipe.cli", "train", str(ROOT / "recipes/digits-convnet.yaml")]
    base += ["--set", f"train.epochs={epochs}", "--set", "track.progress=false", "--set", "track.tensorboard=false"]
    base += ["--set", "train.precision=fp32", "--set", f"track.runs_dir={tmp_path / 'runs'}"]
    one = subprocess.run(
        [*base, "--name", "one-node", "--nproc", "2"], capture_output=True, text=True, env=env, timeout=600
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["one-node"]  # both processes used rank 0's
    run = tmp_path / "runs" / "one-node"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))  # written once, not once per process
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert json.loads((run / "report.json").read_text())["test"]["accuracy"] > 0.9
    assert (run / "checkpoints" / "best.safetensors").is_file()
    assert "2 processes (DDP)" in one.stdout + one.stderr
    nodes = [
        subprocess.Popen(
            [*base, "--name", "two-nodes", "--nnodes", "2", "--node-rank", str(r), "--master", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in (0, 1)
    ]
    outputs = [p.communicate(timeout=600) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert f"node 1 of 2: waiting up to 600 s at 127.0.0.1:{port} for the others" in outputs[1][0]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["one-node", "two-nodes"]  # rank 0's only
    a, b = _history(run), _history(tmp_path / "runs" / "two-nodes")
    assert len(a) == epochs and a == b, (a, b)


def test_a_node_left_alone_says_it_waits_and_what_to_check_when_the_others_never_come(tmp_path):
    """torchrun was silent for its 10-minute join timeout, then ended in a RendezvousTimeoutError traceback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    alone = subprocess.run(
        [sys.executable, "-m", "nnrecipe.cli", "train", str(ROOT / "recipes/digits-convnet.yaml"), "--nnodes", "2",
         "--master", f"127.0.0.1:{port}", "--join-timeout", "2", "--set", f"track.runs_dir={tmp_path / 'runs'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert alone.returncode == 1 and f"node 0 of 2: waiting up to 2 s at 127.0.0.1:{port}" in alone.stdout
    assert alone.stderr.splitlines()[-1].startswith(
        f"error: torchrun failed (exit 1); a RendezvousTimeoutError above means the 2 nodes did not all reach "
        f"127.0.0.1:{port} within 2 s"
    ), alone.stderr[-2000:]
    assert not (tmp_path / "runs").exists()


@contextmanager
def two_machines():
    """Two network namespaces joined by a veth pair, each with its own address (10.211.0.1 and .2) and its own
    loopback: two machines as far as the network goes (the file system stays shared). Needs root."""
    import os
    import shutil

    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("two network namespaces need root and iproute2's ip")
    tag = f"{os.getpid() % 100000}"
    names = [f"nnr{tag}a", f"nnr{tag}b"]
    links = [f"nv{tag}a", f"nv{tag}b"]
    steps = [["netns", "add", names[0]], ["netns", "add", names[1]],
             ["link", "add", links[0], "type", "veth", "peer", "name", links[1]]]  # fmt: skip
    for i in (0, 1):
        steps += [["link", "set", links[i], "netns", names[i]],
                  ["-n", names[i], "addr", "add", f"10.211.0.{i + 1}/24", "dev", links[i]],
                  ["-n", names[i], "link", "set", links[i], "up"], ["-n", names[i], "link", "set", "lo", "up"]]  # fmt: skip
    try:
        for step in steps:
            made = subprocess.run(["ip", *step], capture_output=True, text=True)
            if made.returncode != 0:
                pytest.skip(f"cannot make network namespaces here: ip {' '.join(step)}: {made.stderr.strip()}")
        yield names, links
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)  # takes its end of the veth along


def test_two_machines_meet_over_their_network_whatever_their_hostname_resolves_to(tmp_path):
    """`--nnodes 2` on two "machines" (network namespaces) whose hostname resolves to a loopback address, as
    on many cloud images: each node advertises its address on the route to the master (torchrun
    --local-addr) and binds gloo to that interface. Before, both trained processes waited forever, each told
    to meet the other at 127.0.0.1."""
    import os
    import signal

    with two_machines() as (names, links):
        env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        env.pop("GLOO_SOCKET_IFNAME", None)
        fields = ["train.epochs=2", "track.progress=false", "track.tensorboard=false", "train.precision=fp32"]
        base = [sys.executable, "-m", "nnrecipe.cli", "train", str(ROOT / "recipes/digits-convnet.yaml")]
        base += ["--name", "two", "--nnodes", "2", "--master", "10.211.0.1:29517"]
        for field in [*fields, f"track.runs_dir={tmp_path / 'runs'}"]:
            base += ["--set", field]
        nodes = []
        for r in (0, 1):  # each in a session of its own: a hung node's torchrun and workers are killed with it
            command = ["ip", "netns", "exec", names[r], *base, "--node-rank", str(r)]
            pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
            nodes.append(subprocess.Popen(command, text=True, env=env, start_new_session=True, **pipes))
        try:
            outputs = [p.communicate(timeout=300) for p in nodes]
        finally:
            for p in nodes:
                with suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
    assert [p.returncode for p in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    for r in (0, 1):
        assert f"node {r} of 2: address 10.211.0.{r + 1} on {links[r]}" in outputs[r][0]
    run = tmp_path / "runs" / "two"
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["two"] and len(_history(run)) == 2
    assert "2 processes (DDP)" in outputs[0][0] + outputs[0][1]


def test_a_route_to_loopback_changes_nothing_and_the_users_interface_wins():
    from nnrecipe.engine.distributed import local_route, multi_node_environment, torchrun_command

    assert local_route("127.0.0.1:29500") is None  # every node on this machine
    assert "--local-addr" not in torchrun_command([], 2, 1, 0, "127.0.0.1:29500")
    assert multi_node_environment(None, {"A": "1"}) == {"A": "1"}
    env = multi_node_environment(("10.0.0.2", "eth9"), {"GLOO_SOCKET_IFNAME": "mine"})
    assert env == {"GLOO_SOCKET_IFNAME": "mine", "NCCL_SOCKET_IFNAME": "eth9"}


def test_a_bad_master_address_is_one_line_before_torchrun_starts():
    """A port out of range or not a number reached the user as torchrun's ValueError traceback."""
    from nnrecipe.engine.distributed import torchrun_command

    for master in ("127.0.0.1:99999", "localhost:abc", "10.0.0.1:0"):
        with pytest.raises(UserError, match="--master: the port must be a number from 1 to 65535"):
            torchrun_command([], 2, 1, 0, master)
    with pytest.raises(UserError, match="give node 0's ADDR:PORT"):
        torchrun_command([], 2, 1, 0, "10.0.0.1")
    assert "10.0.0.1:29500" in torchrun_command([], 2, 1, 1, "10.0.0.1:29500")


@pytest.mark.parametrize("flags", [["--node-rank", "1"], ["--master", "10.0.0.1:29500"]])
def test_node_flags_without_several_nodes_are_refused(flags, tmp_path):
    """With --nnodes 1 they were ignored and the machine trained alone, as if it were the whole job."""
    from typer.testing import CliRunner

    from nnrecipe.cli import app

    with pytest.raises(UserError, match="--node-rank/--master: only with --nnodes > 1"):
        CliRunner().invoke(app, ["train", "digits-convnet", "--set", f"track.runs_dir={tmp_path}", *flags],
                           catch_exceptions=False)  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_resuming_with_another_number_of_processes_is_refused_clearly(tmp_path):
    from tests.conftest import make_recipe

    from nnrecipe.errors import UserError
    from nnrecipe.runs import create_run
    from nnrecipe.tasks import get_family

    recipe = make_recipe(tmp_path / "runs")
    run = create_run(recipe, "ddp")
    run.update_meta(status="running", processes=2)  # as a 2-process run killed mid-way leaves it
    with pytest.raises(UserError, match=r"trained with 2 process\(es\); resume it with 2 \(this launch has 1\)"):
        get_family("image_classification").train(recipe, run, resume=True)


def test_fsdp_trains_a_gpt_as_ddp_does_and_resumes_exactly(tmp_path):
    """`train.strategy: fsdp` (FSDP2, gloo on CPU, two processes): the same losses and weights as DDP, a run
    stopped mid-epoch and resumed equal to one that was not, and whole checkpoints a single process uses."""
    import os

    from tests.test_language_modeling import corpus

    from nnrecipe.engine.checkpoint import load_checkpoint
    from nnrecipe.runs import Run
    from nnrecipe.tasks import get_family

    (tmp_path / "train.txt").write_text(corpus())
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(ROOT / "tests" / "fsdp_driver.py"), str(tmp_path / "train.txt"), str(tmp_path / "runs")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert "2 processes (FSDP)" in said and "2 processes (DDP)" in said
    assert said.count("interrupted: checkpoint saved") == 1  # said once, by rank 0
    runs = tmp_path / "runs"
    ddp, fsdp, resumed = (_history(runs / n) for n in ("ddp", "fsdp", "fsdp-resumed"))
    assert len(fsdp) == 3 and fsdp[-1][1] < fsdp[0][1]
    assert sum(fsdp, ()) == pytest.approx(
        sum(ddp, ()), rel=1e-5
    )  # sharding changes where the sums are taken, nothing else
    assert resumed == fsdp  # the interrupted epoch's loss included, summed over both processes
    weights = {
        n: load_checkpoint(runs / n / "checkpoints" / "last.safetensors")[0] for n in ("ddp", "fsdp", "fsdp-resumed")
    }
    assert weights["fsdp"].keys() == weights["ddp"].keys()  # whole, with the plain model's names
    for name, value in weights["fsdp"].items():
        assert torch.equal(value, weights["fsdp-resumed"][name]), name
        # 1e-4: the attention's key bias has a gradient of rounding noise only (softmax ignores a shift),
        # which Adam scales up; every other weight agrees to 2e-7
        assert torch.allclose(value, weights["ddp"][name], atol=1e-4), name
    optim = {n: load_checkpoint(runs / n / "checkpoints" / "last.safetensors")[1]["optimizer"] for n in ("ddp", "fsdp")}
    assert optim["fsdp"]["state"].keys() == optim["ddp"]["state"].keys()  # numbered as Optimizer.state_dict()
    for i, state in optim["ddp"]["state"].items():
        assert torch.allclose(optim["fsdp"]["state"][i]["exp_avg_sq"], state["exp_avg_sq"], atol=1e-7), i
    assert list((runs / "fsdp" / "tensorboard").iterdir())  # its samples, drawn by both processes
    run = Run(runs / "fsdp")
    assert run.report()["val"]["loss"] == pytest.approx(Run(runs / "ddp").report()["val"]["loss"], rel=1e-5)
    family = get_family("language_modeling")
    assert len(family.generate(run, "the ", max_new_tokens=12, seed=0)["text"]) == 12  # one process, no group


def test_fsdp_is_refused_where_it_cannot_shard(tmp_path):
    """Families without transformer blocks, recurrent models, and what would need the whole weights."""
    from tests.conftest import make_recipe

    from nnrecipe.engine.sharding import shard, shard_units
    from nnrecipe.errors import RecipeError, UserError
    from nnrecipe.models.sequence import SequenceConfig, build_sequence_model
    from nnrecipe.recipe import validate_recipe
    from nnrecipe.runs import create_run
    from nnrecipe.tasks import get_family

    recipe = make_recipe(tmp_path / "runs", "train.strategy=fsdp")
    with pytest.raises(
        RecipeError, match=r"train.strategy: fsdp is for .*language_modeling.*this run: image_classification"
    ):
        get_family("image_classification").train(recipe, create_run(recipe, "fsdp"))
    with pytest.raises(RecipeError, match="fsdp trains in bf16 or fp32"):
        make_recipe(tmp_path / "runs", "train.strategy=fsdp", "train.precision=fp16")
    for extra, named in ((["train.ema=true"], "ema"), (["train.adversarial.method=fgm"], "adversarial")):
        with pytest.raises(RecipeError, match=f"fsdp does not combine with {named}"):
            make_recipe(tmp_path / "runs", "train.strategy=fsdp", *extra)
    with pytest.raises(RecipeError, match="continual.strategy: ewc does not combine with train.strategy: fsdp"):
        validate_recipe(
            {"task": "text_classification", "train": {"strategy": "fsdp"}, "continual": {"strategy": "ewc"}}
        )
    gpt = build_sequence_model(SequenceConfig(kind="gpt", vocab_size=10, block_size=8, n_layer=3, n_head=2, n_embd=16))
    assert shard_units(gpt) == list(gpt.blocks)[::-1]
    lstm = build_sequence_model(
        SequenceConfig(kind="lstm", vocab_size=10, block_size=8, n_layer=1, n_embd=16, hidden=16)
    )
    optimizer = torch.optim.AdamW(lstm.parameters())
    with pytest.raises(UserError, match="this model has a LSTM, which FSDP cannot shard; use train.strategy: ddp"):
        shard(lstm, optimizer, torch.device("cpu"), 2)
