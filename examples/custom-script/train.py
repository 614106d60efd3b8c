"""A plain PyTorch DDP script (gloo, CPU) under a RecTrainJob: it reports progress and AUC with the
rectrain_report SDK, checkpoints to RECTRAIN_CHECKPOINT_DIR and resumes from it, and on SIGTERM
checkpoints and exits 143 ("preempted, resume me"). Run it directly (one process per pod), under
torchrun, or on a laptop: `python train.py` (no job around it: reporting does nothing)."""
import argparse, os, signal, sys, time
import torch, torch.distributed as dist
import rectrain_report as rr

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=2000)
p.add_argument("--batch", type=int, default=512)
p.add_argument("--checkpoint-every", type=int, default=100)
args = p.parse_args()
stop = torch.zeros(1)
signal.signal(signal.SIGTERM, lambda *_: stop.fill_(1))  # finish the step, then checkpoint together

if "WORLD_SIZE" not in os.environ:  # a laptop: a world of one
    os.environ.update(WORLD_SIZE="1", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29511")
dist.init_process_group("gloo")  # MASTER_ADDR/PORT, RANK, WORLD_SIZE: set by the operator (or torchrun)
rank, world = dist.get_rank(), dist.get_world_size()
true_w = torch.randn(64, generator=torch.Generator().manual_seed(0))  # the hidden labelling rule

def batch(seed, n):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 64, generator=g)
    return x, torch.bernoulli(torch.sigmoid(x @ true_w), generator=g)

def auc(scores, labels):  # Mann-Whitney: P(score of a positive > score of a negative)
    ranks = torch.empty_like(scores).scatter_(0, scores.argsort(), torch.arange(1.0, len(scores) + 1))
    pos = labels.sum()
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(labels) - pos)))

torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(
    torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 1)))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
ckpt_dir = os.environ.get("RECTRAIN_CHECKPOINT_DIR")
ckpt = os.path.join(ckpt_dir, "last.pt") if ckpt_dir else None
if ckpt_dir:
    os.makedirs(ckpt_dir, exist_ok=True)
step = 0
if ckpt and os.path.exists(ckpt):
    state = torch.load(ckpt)
    model.module.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
    step = state["step"]
    print(f"rank {rank}: resumed from step {step}", flush=True)
    if rank == 0:  # which job wrote it: the operator warns when it was another one (same name re-created)
        rr.resumed(step, checkpoint_job_uid=state.get("job_uid"))

def save():
    if ckpt and rank == 0:  # replicas are identical; write whole, then rename (never half a file)
        torch.save({"model": model.module.state_dict(), "opt": opt.state_dict(), "step": step,
                    "job_uid": os.environ.get("RECTRAIN_JOB_UID")}, ckpt + ".tmp")
        os.replace(ckpt + ".tmp", ckpt)
        rr.checkpoint(step)

eval_x, eval_y = batch(10**9, 4096)
t0, start = time.monotonic(), step
while step < args.steps:
    dist.all_reduce(stop)  # any rank told to stop stops them all
    if stop.item():
        save()
        print(f"rank {rank}: SIGTERM, checkpointed step {step}; exiting 143", flush=True)
        sys.exit(143)
    x, y = batch(step * world + rank, args.batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
    opt.zero_grad(), loss.backward(), opt.step()
    step += 1
    if step % args.checkpoint_every == 0 or step == args.steps:
        save()
    if rank == 0 and (step % 50 == 0 or step == args.steps):
        with torch.no_grad():
            score = auc(model.module(eval_x).squeeze(1), eval_y)
        rr.report(step=step, total_steps=args.steps, loss=loss.item(), epoch=0, metrics={"auc": score},
                  samples_per_second=(step - start) * args.batch * world / (time.monotonic() - t0))
print(f"rank {rank}: done at step {step}", flush=True)
dist.destroy_process_group()
