"""TorchRec DLRM under a RecTrainJob: sharded embedding tables (DistributedModelParallel; the
planner picks table-/row-/column-wise sharding), Criteo-shaped synthetic data with Zipf-skewed ids,
progress and AUC reported with the rectrain_report SDK, sharded checkpoints in
RECTRAIN_CHECKPOINT_DIR (torch.distributed.checkpoint), resume, and exit 143 after a checkpoint on
SIGTERM. Run with one process per GPU: `torchrun train.py` (the operator's PET_* variables fill in
torchrun's settings). Replace `synthetic_batch` with your Criteo reader."""

import argparse
import os
import shutil
import signal
import sys
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.datasets.utils import Batch
from torchrec.distributed import DistributedModelParallel
from torchrec.models.dlrm import DLRM, DLRMTrain
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

import rectrain_report as rr

DENSE, TABLES = 13, 26

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=10_000)
p.add_argument("--batch", type=int, default=2048, help="per rank")
p.add_argument("--table-rows", type=int, default=1_000_000)
p.add_argument("--dim", type=int, default=64)
p.add_argument("--lr", type=float, default=0.05)
p.add_argument("--checkpoint-every", type=int, default=1000)
p.add_argument("--eval-every", type=int, default=500)
args = p.parse_args()

stop = torch.zeros(1)
signal.signal(signal.SIGTERM, lambda *_: stop.fill_(1))  # finish the step; checkpoint together

cuda = torch.cuda.is_available()
local_rank = int(os.environ.get("LOCAL_RANK", "0"))
device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
if cuda:
    torch.cuda.set_device(device)
dist.init_process_group("nccl" if cuda else "gloo")  # MASTER_*/RANK/WORLD_SIZE from torchrun
rank, world = dist.get_rank(), dist.get_world_size()
names = [f"c{i}" for i in range(TABLES)]

# Planted labels: a hidden weight per id and per dense feature, so AUC has something to find.
hidden = torch.Generator().manual_seed(1234)
id_weight = torch.randn(TABLES, 4096, generator=hidden)
dense_weight = torch.randn(DENSE, generator=hidden)


def synthetic_batch(seed: int, n: int) -> Batch:
    """[n] rows: 13 dense features, 26 single-id features (Zipf-skewed over the table), a label."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(n, DENSE, generator=g)
    ids = (torch.rand(n, TABLES, generator=g) ** 3 * args.table_rows).long()  # hot ids are small
    logit = dense @ dense_weight + id_weight.gather(1, (ids % 4096).T).T.sum(1) / TABLES ** 0.5
    labels = torch.bernoulli(torch.sigmoid(logit), generator=g)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=names, values=ids.T.reshape(-1),
                                              lengths=torch.ones(TABLES * n, dtype=torch.int32))
    return Batch(dense_features=dense, sparse_features=kjt, labels=labels).to(device)


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    ranks = torch.empty_like(scores).scatter_(0, scores.argsort(), torch.arange(1.0, len(scores) + 1, device=scores.device))
    pos = labels.sum()
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(labels) - pos)))


tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=args.dim, num_embeddings=args.table_rows, feature_names=[names[i]])
          for i in range(TABLES)]
model = DLRMTrain(DLRM(embedding_bag_collection=EmbeddingBagCollection(tables=tables, device=torch.device("meta")),
                       dense_in_features=DENSE, dense_arch_layer_sizes=[512, 256, args.dim],
                       over_arch_layer_sizes=[512, 256, 1], dense_device=device))
# Sparse tables: fused row-wise Adagrad applied in the backward pass (no dense gradient of a table).
apply_optimizer_in_backward(torch.optim.Adagrad, model.model.sparse_arch.parameters(), {"lr": args.lr})
dmp = DistributedModelParallel(module=model, device=device)
dense_opt = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                  lambda params: torch.optim.Adagrad(params, lr=args.lr))
opt = CombinedOptimizer([dmp.fused_optimizer, dense_opt])

ckpt_dir = os.environ.get("RECTRAIN_CHECKPOINT_DIR")
step = 0
if ckpt_dir and os.path.exists(os.path.join(ckpt_dir, "step")):
    state = {"model": dmp.state_dict()}  # each rank loads its own shards
    step = int(open(os.path.join(ckpt_dir, "step")).read())
    dcp.load(state, checkpoint_id=os.path.join(ckpt_dir, f"step-{step}"))
    dmp.load_state_dict(state["model"])
    print(f"rank {rank}: resumed from step {step}", flush=True)


def save() -> None:
    if not ckpt_dir:
        return
    dcp.save({"model": dmp.state_dict()}, checkpoint_id=os.path.join(ckpt_dir, f"step-{step}"))  # each rank its shards
    dist.barrier()
    if rank == 0:  # the step marker is switched last: a half-written checkpoint is never the one resumed
        with open(os.path.join(ckpt_dir, "step.tmp"), "w") as f:
            f.write(str(step))
        os.replace(os.path.join(ckpt_dir, "step.tmp"), os.path.join(ckpt_dir, "step"))
        for old in os.listdir(ckpt_dir):  # keep the newest two
            if old.startswith("step-") and int(old[5:]) < step - args.checkpoint_every:
                shutil.rmtree(os.path.join(ckpt_dir, old), ignore_errors=True)
        rr.checkpoint(step)


eval_batch = synthetic_batch(10**9 + rank, 8192)
t0, start = time.monotonic(), step
while step < args.steps:
    dist.all_reduce(stop)
    if stop.item():
        save()
        print(f"rank {rank}: SIGTERM, checkpointed step {step}; exiting 143", flush=True)
        sys.exit(143)
    opt.zero_grad()
    loss, _ = dmp(synthetic_batch(step * world + rank, args.batch))
    loss.backward()
    opt.step()
    step += 1
    if step % args.checkpoint_every == 0:
        save()
    if step % args.eval_every == 0 or step == args.steps:
        dmp.eval()
        with torch.no_grad():
            _, (_, logits, labels) = dmp(eval_batch)  # every rank: the sharded lookup is collective
        dmp.train()
        if rank == 0:
            rr.report(step=step, total_steps=args.steps, loss=float(loss.detach()), epoch=0, metrics={"auc": auc(logits.float(), labels)},
                      samples_per_second=(step - start) * args.batch * world / (time.monotonic() - t0))
if step % args.checkpoint_every:  # the last step, unless just saved
    save()
dist.destroy_process_group()
