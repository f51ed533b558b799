"""Data parallel training (cggmlib/training/distributed.py): two CPU processes (gloo) keep identical replicas and
train CGGM as one process with the same global batch; only rank 0 writes files."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cggmlib as cg
from cggmlib.training.distributed import all_reduce_gradients

PER_RANK_BATCH, WORLD = 16, 2


def run(batch_size, out_dir=None):
    data = cg.load_data("synthetic", num_samples=400, batch_size=batch_size, seed=0)
    torch.manual_seed(0)
    model = cg.build_model("synthetic", data, dropout=0.0)  # dropout masks would differ between layouts
    cfg = cg.Config(dataset="synthetic", strategy="cggm", epochs=2, batch_size=batch_size, device="cpu")
    result = cg.train(model, cg.make_strategy("cggm"), data, cfg, out_dir=out_dir, progress=False)
    steps = result.trace.steps()
    return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "balance": steps.filter(like="balance/").to_numpy(), "metrics": result.metrics, "steps": len(steps)}


def worker(rank, folder):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    try:
        torch.save(run(PER_RANK_BATCH, out_dir=folder / f"rank{rank}"), folder / f"result{rank}.pt")
        params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
        params[0].grad = torch.full((3,), float(rank + 1))  # the second parameter has no gradient anywhere
        all_reduce_gradients(params)
        torch.save([p.grad for p in params], folder / f"grads{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    mp.spawn(worker, args=(tmp_path,), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"result{r}.pt", weights_only=False) for r in range(WORLD)]
    for k, v in ranks[0]["params"].items():  # replicas identical, bit for bit
        assert torch.equal(v, ranks[1]["params"][k]), k
    single = run(PER_RANK_BATCH * WORLD)
    assert ranks[0]["steps"] == single["steps"] == 16
    for k, v in single["params"].items():
        torch.testing.assert_close(ranks[0]["params"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert abs(ranks[0]["balance"] - single["balance"]).max() < 1e-4  # the same B_m every step
    assert ranks[0]["metrics"]["acc"] == single["metrics"]["acc"]
    assert (tmp_path / "rank0/checkpoint.pt").exists() and not (tmp_path / "rank1").exists()
    grads = [torch.load(tmp_path / f"grads{r}.pt") for r in range(WORLD)]
    for g in grads:
        assert g[0].tolist() == [1.5, 1.5, 1.5] and g[1] is None
