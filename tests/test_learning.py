"""The training pieces against answers worked out by hand: a model learns, evaluate counts top-1/top-5 right,
mix_batch mixes as DeiT does, the schedule has its warm-up, peak and cosine end, and weight decay skips what it should."""

import math

import pytest
import torch
import torch.nn.functional as F

import cpvt
from conftest import lr_trace
from cpvt.data.base import Split
from cpvt.train.augment import EvalTransform, mix_batch
from cpvt.train.config import TrainConfig, apply_overrides
from cpvt.train.engine import build_scheduler, param_groups
from cpvt.train.tasks import evaluate


# -- a model learns ------------------------------------------------------------------------------------------------
def quadrant_split(n: int, seed: int) -> Split:
    """16 px noise images with a white 3x3 square in one quadrant; the label is the quadrant (chance: 25 %).
    Telling quadrants apart needs position: a GAP model gets it from its PEG's zero padding."""
    g = torch.Generator().manual_seed(seed)
    images = (128 + 25 * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 255)
    labels = torch.randint(4, (n,), generator=g)
    for i, c in enumerate(labels.tolist()):
        y0 = 8 * (c // 2) + int(torch.randint(5, (), generator=g))
        x0 = 8 * (c % 2) + int(torch.randint(5, (), generator=g))
        images[i, :, y0 : y0 + 3, x0 : x0 + 3] = 255
    return Split(images.to(torch.uint8), labels, ["top left", "top right", "bottom left", "bottom right"])


LEARN = {"epochs": 20, "batch_size": 64, "lr": 4e-2, "warmup_epochs": 0.5}  # peak lr 5e-3 (scaled by 64 / 512)


def test_a_model_learns_a_tiny_task():
    """The package's optimiser groups, schedule and evaluation, a few seconds of training: the held-out loss
    falls and top-1 goes well past chance."""
    train_split, val_split = quadrant_split(256, 0), quadrant_split(128, 1)
    torch.manual_seed(0)
    model = cpvt.create_model("cpvt_micro_gap", depth=2, embed_dim=32, num_heads=2, num_classes=4, img_size=16)
    cfg = apply_overrides(TrainConfig(), LEARN)
    mean, std, cpu = (0.5,) * 3, (0.25,) * 3, torch.device("cpu")
    x = EvalTransform(mean, std)(train_split.images)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.scaled_lr())
    steps = len(train_split) // cfg.batch_size
    sched = build_scheduler(opt, cfg, steps)
    before = evaluate(model, val_split, cpu, mean, std, amp="off")
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(train_split))
        for s in range(steps):
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            loss = F.cross_entropy(model(x[idx]), train_split.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    after = evaluate(model, val_split, cpu, mean, std, amp="off")
    assert before["loss"] == pytest.approx(math.log(4), abs=0.05)  # an untrained model: about uniform
    assert after["loss"] < 0.5 * before["loss"], (before, after)  # 1.38 -> 0.11 here
    assert after["top1"] > 3 * 25.0, (before, after)  # 95 % here; 25 % is chance


# -- evaluate ------------------------------------------------------------------------------------------------------
class LookUp(torch.nn.Module):
    """Returns row i of ``table`` for an image whose pixels all hold the value 10 * i (no mean/std shift)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, x):
        return self.table[(x[:, 0, 0, 0] * 255 / 10).round().long()]


def lookup_split(labels: list[int], classes: int) -> Split:
    n = len(labels)
    images = (torch.arange(n, dtype=torch.uint8) * 10).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    return Split(images, torch.tensor(labels), [f"c{i}" for i in range(classes)])


def ranked_logits(labels: list[int], ranks: list[int], classes: int) -> torch.Tensor:
    """Logits 0 .. classes-1 per row, arranged so that each row's label is at the given rank (1 = the largest)."""
    rows = []
    for label, rank in zip(labels, ranks):
        others = [c for c in range(classes) if c != label]
        order = others[: rank - 1] + [label] + others[rank - 1 :]  # classes from the largest logit down
        row = torch.empty(classes)
        for position, c in enumerate(order):
            row[c] = float(classes - 1 - position)
        rows.append(row)
    return torch.stack(rows)


def test_evaluate_counts_top1_top5_and_loss_as_worked_out_by_hand():
    labels, ranks = [3, 0, 6, 2, 5, 1, 4], [1, 1, 3, 5, 6, 7, 2]  # 7 classes: where each true class ranks
    model = LookUp(ranked_logits(labels, ranks, 7))
    split = lookup_split(labels, 7)
    r = evaluate(model, split, torch.device("cpu"), mean=(0, 0, 0), std=(1, 1, 1), batch_size=3, amp="off")
    assert r["images"] == 7
    assert r["top1"] == pytest.approx(100 * 2 / 7)  # ranks 1, 1
    assert r["top5"] == pytest.approx(100 * 5 / 7)  # ranks 1, 1, 3, 5, 2; not 6 and 7
    # cross-entropy with logits 0..6: log(e^0 + ... + e^6) - (the label's logit = 7 - rank)
    lse = math.log(sum(math.exp(k) for k in range(7)))
    assert r["loss"] == pytest.approx(sum(lse - (7 - k) for k in ranks) / 7, rel=1e-6)


def test_evaluate_with_fewer_than_five_classes_has_top5_of_100():
    labels, ranks = [0, 1, 2, 2], [1, 2, 3, 1]
    r = evaluate(LookUp(ranked_logits(labels, ranks, 3)), lookup_split(labels, 3), torch.device("cpu"),
                 mean=(0, 0, 0), std=(1, 1, 1), amp="off")
    assert (r["top1"], r["top5"], r["images"]) == (50.0, 100.0, 4)


# -- mix_batch -----------------------------------------------------------------------------------------------------
def mix_config(**kw) -> TrainConfig:
    return apply_overrides(TrainConfig(), kw)


BATCH = torch.randn(4, 3, 8, 8)
LABELS = torch.tensor([0, 1, 2, 3])  # reversed: 3, 2, 1, 0, so every image is mixed with a different class


def test_mix_batch_off_returns_the_images_and_one_hot_targets():
    for cfg in (mix_config(mixup=0.0, cutmix=0.0), mix_config(mix_prob=0.0)):
        x, target = mix_batch(BATCH, LABELS, 5, cfg)
        assert torch.equal(x, BATCH)
        assert torch.equal(target, torch.eye(5)[LABELS])


def test_mixup_blends_each_image_with_the_reversed_batch_by_the_targets_weight():
    torch.manual_seed(0)
    x, target = mix_batch(BATCH, LABELS, 5, mix_config(mixup=0.8, cutmix=0.0))
    lam = target[0, 0].item()  # image 0 (class 0) is mixed with image 3 (class 3)
    assert 0 < lam < 1 and target[0, 3].item() == pytest.approx(1 - lam)
    torch.testing.assert_close(x, lam * BATCH + (1 - lam) * BATCH.flip(0))
    torch.testing.assert_close(target, lam * torch.eye(5)[LABELS] + (1 - lam) * torch.eye(5)[LABELS.flip(0)])


def test_cutmix_pastes_one_box_from_the_reversed_batch_and_weights_targets_by_its_area():
    pasted_some = False
    for seed in range(20):
        torch.manual_seed(seed)
        x, target = mix_batch(BATCH, LABELS, 5, mix_config(mixup=0.0, cutmix=1.0))
        changed = (x != BATCH).any(dim=1)  # (B, H, W): where the pixels come from the other image
        torch.testing.assert_close(x[changed.unsqueeze(1).expand_as(x)], BATCH.flip(0)[changed.unsqueeze(1).expand_as(x)])
        assert torch.equal(changed, changed[:1].expand_as(changed))  # the same box in every image
        rows, cols = changed[0].any(1).nonzero().flatten(), changed[0].any(0).nonzero().flatten()
        if len(rows):
            box = changed[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert box.all()  # one rectangle
            pasted_some = True
        area = changed[0].float().mean().item()
        assert target[0, 0].item() == pytest.approx(1 - area)  # lambda corrected to the area actually pasted
        assert target[0, 3].item() == pytest.approx(area)
        assert torch.allclose(target.sum(1), torch.ones(4))
    assert pasted_some


def test_mix_batch_picks_cutmix_or_mixup_by_switch_prob_and_repeats_under_a_seed():
    cfg = mix_config(mixup=0.8, cutmix=1.0, mix_switch_prob=0.5)
    kinds = []
    for seed in range(40):
        torch.manual_seed(seed)
        x, target = mix_batch(BATCH, LABELS, 5, cfg)
        lam = target[0, 0].item()
        blended = torch.allclose(x, lam * BATCH + (1 - lam) * BATCH.flip(0), atol=1e-6)
        kinds.append("mixup" if blended and 0 < lam < 1 else "cutmix")
        torch.manual_seed(seed)
        again = mix_batch(BATCH, LABELS, 5, cfg)
        assert torch.equal(again[0], x) and torch.equal(again[1], target)  # exact resume relies on this
    assert 10 < kinds.count("cutmix") < 30, kinds


# -- the schedule --------------------------------------------------------------------------------------------------


def test_schedule_warms_up_linearly_then_follows_a_cosine_to_min_lr():
    # 100 epochs with 5 of warm-up: a run long enough that nothing about it is shortened
    cfg = mix_config(epochs=100, warmup_epochs=5.0, lr=5e-4, batch_size=1024, warmup_lr=1e-6, min_lr=1e-5)
    peak = 1e-3  # 5e-4 per 512 images, scaled to the batch of 1024
    lrs = lr_trace(cfg, steps_per_epoch=10)  # 1000 steps, 50 of warm-up
    assert lrs[0] == pytest.approx(1e-6)  # the first step starts at warmup_lr
    assert lrs[25] == pytest.approx(1e-6 + (peak - 1e-6) / 2)  # half-way up, linearly
    assert lrs[50] == pytest.approx(peak) and max(lrs) == pytest.approx(peak)  # the peak, at the end of warm-up
    assert all(a < b for a, b in zip(lrs[:50], lrs[1:51]))
    assert lrs[50 + 475] == pytest.approx((peak + 1e-5) / 2, rel=1e-4)  # the cosine's midpoint
    assert lrs[50 + 190] == pytest.approx(1e-5 + (peak - 1e-5) * (1 + math.cos(math.pi / 5)) / 2, rel=1e-4)
    assert all(a >= b for a, b in zip(lrs[50:], lrs[51:]))
    assert lrs[-1] == pytest.approx(1e-5, rel=1e-4)  # the cosine ends at min_lr


def test_schedule_without_warm_up_starts_at_the_peak():
    lrs = lr_trace(mix_config(epochs=20, warmup_epochs=0.0, lr=5e-4, batch_size=512, min_lr=1e-5), 5)
    assert lrs[0] == pytest.approx(5e-4) and lrs[-1] == pytest.approx(1e-5, rel=1e-4)


# -- weight decay groups -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, tables", [("deit_micro", ["pos_embed.table"]),
                                          ("cpvt_micro", ["pos_block.0.proj.0.weight", "pos_block.0.proj.0.bias"]),
                                          ("deit_micro_rpe", ["rel_pos.table"])])
def test_weight_decay_skips_biases_norms_class_token_and_position_parameters(name, tables):
    torch.manual_seed(0)
    model = cpvt.create_model(name, depth=2)
    model.head.bias.requires_grad_(False)  # frozen: in no group
    decay, no_decay = param_groups(model, 0.05)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, kept = {names[id(p)] for p in decay["params"]}, {names[id(p)] for p in no_decay["params"]}
    assert not decayed & kept and decayed | kept == set(names.values()) - {"head.bias"}
    for n in names.values():
        if n.endswith(".bias") or ".norm" in n or n.startswith("norm."):
            assert n in kept or n == "head.bias", n
    assert {"cls_token", *tables} <= kept
    assert {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "head.weight"} <= decayed
    assert decayed == {n for n, p in model.named_parameters() if p.ndim >= 2} - {"cls_token", *tables}

    # what the groups do: with zero gradients AdamW only decays, by lr * weight_decay, and only the first group
    opt = torch.optim.AdamW([decay, no_decay], lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        expected = before[n] * (1 - 0.1 * 0.05) if n in decayed else before[n]
        torch.testing.assert_close(p.detach(), expected, msg=n)
