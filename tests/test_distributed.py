"""Data-parallel passes on torch.distributed: 2 gloo processes give the results of 1 process.

Two CPU processes (``torch.multiprocessing`` spawn, a free localhost port) run activation
matching, a BatchNorm reset, interpolation curves (with BN reset, with REPAIR, vectorised) and
STE on a small VGG with BatchNorm (and STE on an MLP without, whose gradients are all-reduced,
and that gradient itself);
every rank must hold exactly the permutations one process finds, and every statistic and loss
must equal the one-process value to 1e-6 relative. Barriers are differences of losses (here
~0.01 between losses ~2.5), and float32 forward passes over different shards round
differently (~1e-7 relative), so barriers are held to 1e-6 relative to the curve's loss scale.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from permalign import distributed
from permalign.data import load_digits
from permalign.interpolation import evaluate_lambdas, interpolation_curve
from permalign.match import get_method
from permalign.permutation import apply_permutation
from permalign.statedict import lerp_state, reset_bn_stats
from permalign.zoo import build

MODEL = "vgg11:width=0.125,norm=bn"
REL = 1e-6


def _case():
    torch.manual_seed(0)
    data = load_digits().subset(train=301, test=97, seed=0)  # odd sizes: unequal shards
    model, spec = build(MODEL, input_shape=data.input_shape, num_classes=data.num_classes)
    state_a = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    other, _ = build(MODEL, input_shape=data.input_shape, num_classes=data.num_classes)
    return data, model, spec, state_a, other.state_dict()


def compute() -> dict:
    """Everything the test compares, in this process (shared data passes under a group)."""
    torch.set_num_threads(1)
    data, model, spec, state_a, state_b = _case()
    out: dict = {}
    perm = get_method("activation").run(spec, state_a, state_b, model=model, data=data,
                                        batch_size=64).perm
    out["activation"] = perm
    aligned = apply_permutation(spec, perm, state_b)
    model.load_state_dict(lerp_state(state_a, aligned, 0.5))
    reset_bn_stats(model, data.train_x, num_batches=5, batch_size=64)  # 5 batches: 3 + 2
    out["bn"] = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    for name, kwargs in (("curve", {"bn_reset": True}), ("repair", {"repair": True})):
        curve = interpolation_curve(model, state_a, aligned, data, points=3, spec=spec,
                                    bn_batches=3, **kwargs)
        out[name] = {"barriers": curve.barriers(), "values": curve.to_json()["curve"]}
    out["vectorised"] = evaluate_lambdas(model, state_a, aligned, [0.0, 0.5, 1.0],
                                         data.test_x, data.test_y, batch_size=60)
    ste = get_method("ste").run(spec, state_a, state_b, model=model,
                                data=data.subset(train=200, seed=1), batch_size=100,
                                eval_examples=101)
    out["ste"] = {"perm": ste.perm, "history": ste.history}
    torch.manual_seed(3)
    mlp, mlp_spec = build("mlp:depth=2,width=32", input_shape=data.input_shape,
                          num_classes=data.num_classes)
    mlp_a = {k: v.clone() for k, v in mlp.state_dict().items()}
    torch.manual_seed(2)
    mlp_b, _ = build("mlp:depth=2,width=32", input_shape=data.input_shape,
                     num_classes=data.num_classes)
    ste = get_method("ste").run(mlp_spec, mlp_a, mlp_b.state_dict(), model=mlp, data=data,
                                batch_size=75, eval_examples=101, lr=0.1)
    out["ste_shared"] = {"perm": ste.perm, "history": ste.history}
    # the gradient STE steps with: shares of one minibatch, weighted sum over the ranks
    start, stop = distributed.shard_bounds(75)
    loss = torch.nn.functional.cross_entropy(mlp(data.train_x[start:stop]),
                                             data.train_y[start:stop])
    loss.backward()
    params = list(mlp.parameters())
    distributed.average_gradients(params, (stop - start) / 75)
    out["gradient"] = [p.grad for p in params]
    return out


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        assert distributed.active() and distributed.world_size() == world
        torch.save(compute(), Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _close(a, b, where: str, scale: float = 0.0) -> None:
    """Equal structure; tensors and floats equal to REL relative (or to REL * ``scale``
    absolute); permutations exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        loss_scale = scale
        if "barriers" in a:  # differences of losses: measured against the losses
            loss_scale = max(map(abs, a["values"]["train_loss"] + a["values"]["test_loss"]))
        for k in a:
            child = loss_scale if k == "barriers" else scale
            if k == "gradient":  # float32 sums in another order: against the largest entry
                child = max(float(g.abs().max()) for g in a[k])
            _close(a[k], b[k], f"{where}.{k}", child)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]", scale)
    elif isinstance(a, torch.Tensor) and not a.is_floating_point():
        assert torch.equal(a, b), where
    else:
        a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        assert torch.allclose(a, b, rtol=REL, atol=REL * max(scale, 1e-3)), \
            f"{where}: {a} vs {b}"


def test_two_gloo_processes_match_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    threads = torch.get_num_threads()
    try:
        single = compute()
    finally:  # (compute sets one thread, as in the workers; later tests expect the default)
        torch.set_num_threads(threads)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r, result in enumerate(ranks):
        _close(single, result, f"rank{r}")
    # the comparison is not vacuous: the pass sees data (the BN statistics moved from their
    # reset values) and the two models are not aligned by the identity
    assert any(not torch.equal(v, torch.arange(len(v))) for v in single["activation"].values())
    assert all(not torch.allclose(v, torch.zeros_like(v)) for k, v in single["bn"].items()
               if k.endswith("running_mean"))
    assert all(g.abs().max() > 1e-4 for g in single["gradient"])


def test_without_a_group_nothing_is_shared():
    x = torch.arange(10)
    assert distributed.shard(x)[0] is x
    assert not distributed.active() and distributed.is_main() and distributed.world_size() == 1
    assert distributed.on_main(lambda: 7) == 7


@pytest.mark.parametrize("n", [5, 6, 7])
def test_shards_are_disjoint_and_cover(monkeypatch, n):
    parts = []
    for r in range(3):
        monkeypatch.setattr(distributed, "active", lambda: True)
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append(distributed.shard(torch.arange(n))[0])
    assert torch.equal(torch.cat(parts), torch.arange(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_only_rank_zero_writes(tmp_path, monkeypatch, capsys):
    """A rank other than 0 runs the command but leaves no file, no temporary file, no folder,
    and prints no results; rank 0 writes as usual."""
    from permalign.cli import main
    argv = ["train", "--model", "mlp:depth=1,width=8", "--epochs", "1", "--quiet",
            "--out", str(tmp_path / "sub" / "m.pt")]
    (tmp_path / "sub").mkdir()
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert main(argv) == 0
    assert list(tmp_path.rglob("*")) == [tmp_path / "sub"]
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    assert main(argv) == 0
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["m.pt"]
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow
def test_torchrun_align_equals_one_process(tmp_path):
    """``torchrun --nproc-per-node 2 -m permalign align`` writes what one process writes, and
    nothing else (no temporary files from either rank)."""
    import subprocess
    import sys
    model = "vgg11:width=0.25,norm=bn"  # trained 3 epochs: no near-ties between units
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "permalign"]
    for seed in (0, 1):
        subprocess.run(cli + ["train", "--model", model, "--epochs", "3", "--seed", str(seed),
                              "--quiet", "--out", str(tmp_path / f"m{seed}.pt")],
                       check=True, env=env, capture_output=True)
    common = ["align", str(tmp_path / "m0.pt"), str(tmp_path / "m1.pt"), "--model", model,
              "--method", "activation", "--quiet"]
    subprocess.run(cli + common + ["--out", str(tmp_path / "one.pt")], check=True, env=env,
                   capture_output=True)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                          "2", "-m", "permalign"] + common + ["--out", str(tmp_path / "two.pt")],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("wrote") == 1  # rank 0 only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m0.pt", "m1.pt", "one.pt", "two.pt"]
    assert (tmp_path / "one.pt").read_bytes() == (tmp_path / "two.pt").read_bytes()


def _refused_worker(rank: int, world: int, port: int, folder: str) -> None:
    """Every rank runs ``align --method activation`` onto an existing --out (no --force):
    rank 0 refuses it; each rank's exit code and stderr are saved."""
    import contextlib
    import io
    from datetime import timedelta

    from permalign.cli import main
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = main(["align", f"{folder}/a.pt", f"{folder}/b.pt", "--model",
                         "mlp:depth=1,width=8", "--method", "activation", "--quiet",
                         "--out", f"{folder}/exists.pt"])
    finally:
        dist.destroy_process_group()
    torch.save({"code": code, "err": err.getvalue()}, Path(folder) / f"refused{rank}.pt")


def test_a_refused_output_ends_every_rank_quietly(tmp_path):
    """A user error found on rank 0 only (its output checks) must not leave rank 1 waiting in
    a collective or dying with a traceback: both exit 2, rank 1 without a message."""
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        model, _ = build("mlp:depth=1,width=8", input_shape=(1, 8, 8), num_classes=10)
        torch.save(model.state_dict(), tmp_path / f"{name}.pt")
    (tmp_path / "exists.pt").write_bytes(b"keep")
    mp.spawn(_refused_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    zero, one = (torch.load(tmp_path / f"refused{r}.pt") for r in (0, 1))
    assert zero["code"] == one["code"] == 2
    assert "already exists" in zero["err"] and len(zero["err"].strip().splitlines()) == 1
    assert one["err"] == ""
    assert (tmp_path / "exists.pt").read_bytes() == b"keep"
