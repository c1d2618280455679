"""Run under ``torchrun --nproc_per_node=2``: sharded evaluation against one process's.

Every rank scores its shard of 11 samples (uneven: 6 + 5); the summed figures must be those of
the whole set, on every rank. Writes ``ok`` to argv[1] on rank 0.
"""

import sys

import torch

from geopath import distributed
from geopath.archs import MLP
from geopath.data import Dataset
from geopath.evaluate import evaluate


def main() -> None:
    comm = distributed.setup("cpu")
    torch.manual_seed(0)
    model = MLP(in_features=5, hidden=(4,), num_classes=3).double()
    ds = Dataset(torch.randn(11, 5, dtype=torch.float64), torch.randint(0, 3, (11,)), "random", "test")
    with distributed.using(distributed.Single()):
        whole = evaluate(model, ds, batch_size=4)
    got = evaluate(model, ds, batch_size=4)
    assert got.samples == 11 and whole.samples == 11, (got, whole)
    assert got.accuracy == whole.accuracy, (got, whole)
    assert abs(got.loss - whole.loss) < 1e-12, (got, whole)
    mine = ds.y[comm.shard(len(ds))]
    assert len(mine) in (5, 6)  # each rank really scored a part only
    if comm.is_main:
        with open(sys.argv[1], "w") as fh:
            fh.write("ok")
    distributed.teardown()
    distributed.exit_now(0)


if __name__ == "__main__":
    main()
