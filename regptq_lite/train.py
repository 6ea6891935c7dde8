"""Deterministic from-scratch training of the tiny detector on the endless scene stream."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .coco_eval import evaluate
from .detectors import CHECKPOINTS, MATCHERS, TinyRetinaNet, build_model, count_parameters, save_checkpoint
from .progress import progress
from .provenance import git_commit, machine
from .scenes import SceneSet, target_of, to_tensor, train_batch


class SceneBatches(torch.utils.data.IterableDataset):
    """Batches 0 .. iters-1 of the training stream as (images, targets), made in a worker process."""

    def __init__(self, iters: int, batch_size: int, seed: int) -> None:
        self.iters, self.batch_size, self.seed = iters, batch_size, seed

    def __iter__(self):
        for step in range(self.iters):
            scenes = train_batch(step, self.batch_size, seed=self.seed)
            yield [to_tensor(s.image) for s in scenes], [target_of(s) for s in scenes]


def lr_at(step: int, iters: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, iters - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


BOX_LOSSES = ("l1", "giou")
SCHEDULES = {"tiny_retinanet": 11200, "tiny_fasterrcnn": 2800}  # iterations of the shipped checkpoints
HEAD_INITS = ("normal", "kaiming")


def check_recipe(name: str, matcher: str, box_loss: str, head_init: str) -> None:
    """Reject an unknown recipe, or a recipe other than the default for a detector other than
    the tiny RetinaNet (the switches exist only there)."""
    if matcher not in MATCHERS or box_loss not in BOX_LOSSES or head_init not in HEAD_INITS:
        raise ValueError(f"unknown recipe: matcher {matcher!r}, box loss {box_loss!r}, head init {head_init!r}")
    if name != "tiny_retinanet" and (matcher, box_loss, head_init) != (MATCHERS[0], BOX_LOSSES[0], HEAD_INITS[0]):
        raise ValueError("--matcher, --box-loss and --head-init apply only to tiny_retinanet")


def set_recipe(model: torch.nn.Module, matcher: str, box_loss: str, head_init: str) -> dict[str, str]:
    """Switch the tiny RetinaNet's anchor matching, box loss and head-tower initialisation (checked
    by ``check_recipe``); the recipe as the card records it.

    ``normal`` keeps torchvision's N(0, 0.01) head convs; ``kaiming`` re-draws the tower convs
    (not the prediction layers) with He initialisation. Any other detector keeps its own recipe.
    """
    if not isinstance(model, TinyRetinaNet):
        return {"box_loss": "smooth_l1"}
    model.matcher = matcher
    model.head.regression_head._loss_type = box_loss  # how torchvision's RetinaNet v2 selects GIoU
    if head_init == "kaiming":
        for tower in (model.head.classification_head.conv, model.head.regression_head.conv):
            for module in tower.modules():
                if isinstance(module, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return {"matcher": matcher, "box_loss": box_loss, "head_init": head_init}


def train(
    name: str = "tiny_retinanet",
    iters: int | None = None,
    batch_size: int = 16,
    lr: float = 1.5e-3,
    seed: int = 0,
    matcher: str = MATCHERS[0],
    box_loss: str = BOX_LOSSES[0],
    head_init: str = HEAD_INITS[0],
    threads: int = 2,
    device: str = "cpu",
    val_size: int | None = None,
    out: Path | None = None,
    command: str = "",
) -> dict:
    """Train ``name`` from scratch for ``iters`` steps (default: its shipped schedule), evaluate on the
    validation scenes, save weights and card."""
    check_recipe(name, matcher, box_loss, head_init)
    iters = iters or SCHEDULES[name]
    torch.set_flush_denormal(True)  # before the thread pool starts, so that every thread inherits it
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
    model, _ = build_model(name)
    recipe = set_recipe(model, matcher, box_loss, head_init)
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    warmup = max(1, iters // 20)
    start = time.time()
    batches = DataLoader(SceneBatches(iters, batch_size, seed), batch_size=None, num_workers=1, prefetch_factor=4)
    bar = progress(batches, total=iters, desc=f"train {name}", unit="it")
    for step, (images, targets) in enumerate(bar):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, iters, lr, warmup)
        images = [x.to(device) for x in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        if step % 20 == 0:
            bar.set_postfix({k.removeprefix("loss_")[:4]: f"{v.item():.3f}" for k, v in losses.items()})
    train_seconds = time.time() - start
    model.cpu().eval()
    metrics = evaluate(model, SceneSet("val", size=val_size))
    card = {
        "model": name,
        "command": command,
        "seed": seed,
        "iters": iters,
        "batch_size": batch_size,
        "lr": lr,
        **recipe,
        "threads": threads,
        "train_seconds": round(train_seconds, 1),
        "parameters": count_parameters(model),
        "machine": machine(),
        "commit": git_commit(),
        "torch": torch.__version__,
        "val": metrics,
    }
    save_checkpoint(model, Path(out) if out else CHECKPOINTS[name], card)
    return card
