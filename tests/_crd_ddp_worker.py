"""torchrun worker for test_methods_crd: 2 gloo ranks step a CRD method on their own half batch.

Each rank saves its banks and ``z``; rank 0 also saves what one process applying both halves' embeddings to the
same initial bank gives (the expected bank), and ``z`` as the mean of the two halves' first-batch estimates.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from featdistill.losses.contrastive import contrast_scores, momentum_rows
from featdistill.methods.crd import CRD

N, C = 16, 4
HALVES = ([0, 1, 2, 3], [10, 11, 12, 13])


def batch(ids: list[int]) -> dict[str, torch.Tensor]:
    sid = torch.tensor(ids)
    return {"sample_id": sid, "view_id": torch.zeros(len(ids), dtype=torch.long), "target": sid % C}


def feats(ids: list[int]) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(sum(ids))
    return {"emb": torch.randn(len(ids), 6, generator=g)}, {"emb": torch.randn(len(ids), 10, generator=g)}


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    m = CRD(k=5, feat_dim=8, num_samples=N, seed=7, mode="uniform")
    s0, t0 = feats(HALVES[0])
    m.setup(s0, t0)
    m.train()
    pristine = copy.deepcopy(m)
    s, t = feats(HALVES[rank])
    m(s, t, batch(HALVES[rank]), 0.0)
    res = {"memory_s": m.memory_s, "memory_t": m.memory_t, "z": m.z}
    if rank == 0:
        p = pristine
        ests, ids, es, et = [], [], [], []
        for half in HALVES:
            fs, ft = feats(half)
            v_s, v_t = p.adapters["embed_s"](fs["emb"]).detach(), p.adapters["embed_t"](ft["emb"]).detach()
            cidx = p.contrast_indices(batch(half), 0.0)
            o_s = contrast_scores(v_s, p.memory_t, cidx, p.temperature)
            o_t = contrast_scores(v_t, p.memory_s, cidx, p.temperature)
            ests.append(torch.stack([o_s.mean(), o_t.mean()]) * N)
            ids += half
            es.append(v_s)
            et.append(v_t)
        idx = torch.tensor(ids)
        single_s, single_t = p.memory_s.clone(), p.memory_t.clone()
        single_s[idx] = momentum_rows(single_s[idx], torch.cat(es), 0.5)
        single_t[idx] = momentum_rows(single_t[idx], torch.cat(et), 0.5)
        res.update(
            single_s=single_s,
            single_t=single_t,
            single_z=(ests[0] + ests[1]) / 2,
            updated=(m.memory_s != p.memory_s).any(1).nonzero().flatten(),
        )
    torch.save(res, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
