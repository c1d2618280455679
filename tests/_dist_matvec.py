"""Run under ``torchrun --nproc_per_node=2``: sharded metric products against the dense ``JᵀHJ``.

Every rank builds the metric of its shard of one batch; the all-reduced products must equal
the dense metric of the whole batch (float64, tiny MLP). Writes ``ok`` to argv[1] on rank 0.
"""

import sys

import torch
from torch.func import functional_call, jacrev

from geopath import distributed
from geopath._params import ParamSpace, model_vector
from geopath.archs import MLP
from geopath.metric import MetricKind, MetricOperator


def main() -> None:
    comm = distributed.setup("cpu")
    torch.manual_seed(0)
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
    if comm.is_main:
        with open(sys.argv[1], "w") as fh:
            fh.write("ok")
    distributed.teardown()
    distributed.exit_now(0)


if __name__ == "__main__":
    main()
