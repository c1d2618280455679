"""Checks run under ``torchrun --nproc_per_node=2`` (``python _dist_checks.py CHECK FLAG``).

- ``metric``: every rank builds the metric of its shard of one batch; the all-reduced products
  must equal the dense metric ``JᵀHJ`` of the whole batch (float64, tiny MLP).
- ``evaluation``: every rank scores its shard of 11 samples (uneven: 6 + 5); the summed figures
  must be those of the whole set, on every rank.
- ``train``: data-parallel masked SGD with a penalty term (37 samples, batches of 8: the last
  one uneven; then batches of one, where a rank's shard is empty) must take the single
  process's steps, on every rank; so must the sharded Fisher diagonal, Bezier training and connect's
  relaxed path.

Rank 0 writes ``ok`` to FLAG when the check passed.
"""

import sys

import torch
from torch.func import functional_call, jacrev

from geopath.core import distributed
from geopath.core.params import ParamSpace, model_vector
from geopath.io.archs import MLP
from geopath.io.data import Dataset
from geopath.core.evaluate import evaluate
from geopath.core.metric import MetricKind, MetricOperator


def check_metric(comm) -> None:
    model = MLP(in_features=5, hidden=(4,), num_classes=3).double()
    space = ParamSpace.of(model)
    w = model_vector(model, space)
    x = torch.randn(11, 5, dtype=torch.float64)  # 11 samples: uneven shards (6 + 5)
    u = torch.randn(space.n, dtype=torch.float64)

    def f(flat):
        return functional_call(model, space.unflatten(flat), (x,))

    J = jacrev(f)(w).reshape(-1, space.n)  # (samples·classes) × n
    p = torch.softmax(f(w), -1)
    for kind in (MetricKind.LOGITS, MetricKind.FISHER):
        if kind is MetricKind.LOGITS:
            H = torch.eye(J.shape[0], dtype=torch.float64)
        else:
            H = torch.block_diag(*[torch.diag(pi) - torch.outer(pi, pi) for pi in p])
        dense = J.T @ H @ J / len(x)
        for cache in (True, False):
            mine = x[comm.shard(len(x))]
            G = MetricOperator(model, space, w, list(torch.split(mine, 4)), kind, cache=cache)
            assert G.num_samples == len(x), G.num_samples
            got = G.matvec(u)
            assert torch.allclose(got, dense @ u, rtol=1e-10, atol=1e-12), (kind, cache, (got - dense @ u).abs().max())
            c = [torch.randn(len(z), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(comm.rank))
                 for z in G.logits]
            jt = G.rmatvec_outputs(c)
            ref = torch.zeros_like(jt)
            rows = torch.arange(len(x))[comm.shard(len(x))]
            for k, i in enumerate(rows.tolist()):
                mb, j = divmod(k, 4)
                ref += J.reshape(len(x), 3, space.n)[i].T @ c[mb][j]
            comm.sum_(ref)
            assert torch.allclose(jt, ref / len(x), rtol=1e-10, atol=1e-12)


def check_evaluation(comm) -> None:
    model = MLP(in_features=5, hidden=(4,), num_classes=3).double()
    ds = Dataset(torch.randn(11, 5, dtype=torch.float64), torch.randint(0, 3, (11,)), "random", "test")
    with distributed.using(distributed.Single()):
        whole = evaluate(model, ds, batch_size=4)
    got = evaluate(model, ds, batch_size=4)
    assert got.samples == 11 and whole.samples == 11, (got, whole)
    assert got.accuracy == whole.accuracy, (got, whole)
    assert abs(got.loss - whole.loss) < 1e-12, (got, whole)
    assert len(ds.y[comm.shard(len(ds))]) in (5, 6)  # each rank really scored a part only


def check_train(comm) -> None:
    import copy

    from geopath.core.train import train

    torch.manual_seed(1)  # the same network and data on every rank
    model = MLP(in_features=5, hidden=(4,), num_classes=3).double()
    ds = Dataset(torch.randn(37, 5, dtype=torch.float64), torch.randint(0, 3, (37,)), "random", "train")
    space = ParamSpace.of(model)
    mask = torch.zeros(space.n, dtype=torch.bool)
    mask[::3] = True
    ref = copy.deepcopy(model)
    w0 = model_vector(model, space).clone()

    def penalty_of(m):
        return lambda: 0.05 * sum(p.pow(2).sum() for p in m.parameters())

    with distributed.using(distributed.Single()):
        one = train(ref, ds, epochs=2, batch_size=8, lr=0.1, mask=mask, penalty=penalty_of(ref))
    seen = []
    model.register_forward_hook(lambda m, inp, out: seen.append(len(inp[0])))
    got = train(model, ds, epochs=2, batch_size=8, lr=0.1, mask=mask, penalty=penalty_of(model))
    assert 0.4 * one.sample_passes <= sum(seen) <= 0.6 * one.sample_passes, (sum(seen), one)  # its shards only
    w, w_ref = model_vector(model, space), model_vector(ref, space)
    assert torch.allclose(w, w_ref, rtol=1e-10, atol=1e-12), (w - w_ref).abs().max()
    assert (w_ref - w0)[~mask].abs().max() > 1e-2  # training moved the weights
    assert bool((w[mask] == 0).all())
    assert abs(got.final_loss - one.final_loss) < 1e-10 and got.sample_passes == one.sample_passes, (got, one)
    # batches of one sample: rank 1's shard is empty at every step, its gradient comes from the all-reduce
    small = Dataset(ds.x[:5], ds.y[:5], "random", "train")
    with distributed.using(distributed.Single()):
        train(ref, small, epochs=1, batch_size=1, lr=0.1, penalty=penalty_of(ref))
    train(model, small, epochs=1, batch_size=1, lr=0.1, penalty=penalty_of(model))
    assert torch.allclose(model_vector(model, space), model_vector(ref, space), rtol=1e-10, atol=1e-12)
    # the other peers' work: the Fisher diagonal and a Bezier curve's middle point
    from geopath.peers import bezier, fisher_diag

    w_a, w_b = model_vector(ref, space), w0
    with distributed.using(distributed.Single()):
        f_one = fisher_diag(ref, ds, samples=29, chunk=8, seed=3)
        b_one = bezier(ref, w_a, w_b, ds, sample_passes=60, batch_size=7, lr=0.1, seed=4)
    f_got = fisher_diag(model, ds, samples=29, chunk=8, seed=3)
    b_got = bezier(model, w_a, w_b, ds, sample_passes=60, batch_size=7, lr=0.1, seed=4)
    assert torch.allclose(f_got, f_one, rtol=1e-10, atol=1e-14) and float(f_one.abs().max()) > 1e-4
    assert torch.allclose(b_got, b_one, rtol=1e-10, atol=1e-12)
    assert float((b_one - 0.5 * (w_a + w_b)).abs().max()) > 1e-3  # the curve was trained
    # connect's relaxed path: its free nodes
    from geopath.core.params import load_vector
    from geopath.core.relax import outputs, relax

    at_b = copy.deepcopy(ref)
    load_vector(at_b, space, w_b)
    z_a, z_b = outputs(ref, ds, "cpu"), outputs(at_b, ds, "cpu")
    with distributed.using(distributed.Single()):
        r_one = relax(ref, w_a, w_b, z_a, z_b, ds, sample_passes=140, free=2, batch_size=7, lr=1.0, seed=5)
    r_got = relax(model, w_a, w_b, z_a, z_b, ds, sample_passes=140, free=2, batch_size=7, lr=1.0, seed=5)
    for got, one in zip(r_got, r_one):
        assert torch.allclose(got, one, rtol=1e-10, atol=1e-12)
    assert float((r_one[1] - (2 * w_a + w_b) / 3).abs().max()) > 1e-2, (r_one[1] - (2 * w_a + w_b) / 3).abs().max()


def main() -> None:
    check = {"metric": check_metric, "evaluation": check_evaluation, "train": check_train}[sys.argv[1]]
    flag = sys.argv[2]
    comm = distributed.setup("cpu")
    torch.manual_seed(0)
    check(comm)
    if comm.is_main:
        with open(flag, "w") as fh:
            fh.write("ok")
    distributed.teardown()
    distributed.exit_now(0)


if __name__ == "__main__":
    main()
