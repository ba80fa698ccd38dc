"""Small pieces shared by the tests of dynalora.allocation: toy models and a manual loop."""

from __future__ import annotations

import torch
from conftest import tiny_bert
from torch import nn


class TwoLayerToy(nn.Module):
    """Two linear layers `a` and `b` read the same input; the loss is an MSE on their sum.

    `use_b=False` multiplies b's output by 0 (it still runs, so it has gradients, all zero);
    `scale_b` scales b's input (its variance grows with scale_b ** 2).
    """

    def __init__(self, d: int = 16, use_b: bool = True, scale_b: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, d)
        self.use_b, self.scale_b = use_b, scale_b
        self.teacher = torch.randn(d, d) / d**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.a(x) + self.b(x * self.scale_b) * (1.0 if self.use_b else 0.0)
        return ((out - x @ self.teacher.T) ** 2).mean()


def quiet_bert(seed: int = 0) -> nn.Module:
    """tiny_bert in training mode with every dropout at 0 (deterministic steps)."""
    model = tiny_bert(seed=seed)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model.train()


def bert_batches(n: int, batch: int = 8, seq: int = 12, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 120, (batch, seq), generator=gen)
        mask = torch.ones_like(ids)
        out.append({"input_ids": ids, "attention_mask": mask,
                    "labels": torch.randint(0, 2, (batch,), generator=gen)})
    return out


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def optimizer_matches_model(optimizer: torch.optim.Optimizer, model: nn.Module) -> bool:
    """The optimizer holds exactly the model's trainable parameters, and state for no others."""
    held = [p for group in optimizer.param_groups for p in group["params"]]
    live = trainable(model)
    ids = {id(p) for p in held}
    return (len(held) == len(live) and ids == {id(p) for p in live}
            and all(id(p) in ids for p in optimizer.state))


def run_steps(model: nn.Module, controller, optimizer, batches: list[dict], accumulation: int = 1) -> list:
    """A manual loop: `accumulation` micro-batches per optimizer step, mean loss."""
    records = []
    for i in range(0, len(batches), accumulation):
        for micro in batches[i:i + accumulation]:
            loss = (model(**micro).loss + controller.loss_terms()) / accumulation
            loss.backward()
        optimizer.step()
        record = controller.after_optimizer_step()
        if record is not None:
            records.append(record)
        optimizer.zero_grad()
    return records


def split(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    size = next(iter(batch.values())).shape[0] // parts
    return [{k: v[j * size:(j + 1) * size] for k, v in batch.items()} for j in range(parts)]


class ParallelToy(nn.Module):
    """Layers l0..l{n-1} read the same input; layer i's output enters the loss times `uses[i]`.

    Each layer has its own teacher target, so a layer with use 0 cannot lower the loss and
    two layers with equal uses and equal base weights (`same_base`) face identical problems.
    """

    def __init__(self, uses: list[float], d: int = 16, same_base: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.ModuleList(nn.Linear(d, d) for _ in uses)
        if same_base:
            for layer in self.layers[1:]:
                layer.load_state_dict(self.layers[0].state_dict())
        self.uses = list(uses)
        self.teacher = torch.randn(d, d) / d**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        target = x @ self.teacher.T
        return sum(u * ((layer(x) - target) ** 2).mean() for u, layer in zip(self.uses, self.layers))


class RankNeedToy(nn.Module):
    """Layers whose ideal updates need different numbers of directions: layer i must learn a
    target Delta W of rank `ranks[i]` (all of Frobenius norm 2, spread evenly over their
    directions), on top of its frozen base. At a rank below a layer's need, the loss keeps
    the energy of the directions it cannot fit: (norm^2 / need) per missing direction / d.
    `outs`: each layer's output width (default d): the loss sums over outputs and divides by
    d, so a direction is worth the same in a wide layer as in a narrow one, and costs more."""

    def __init__(self, ranks: list[int], d: int = 16, seed: int = 0, outs: list[int] | None = None) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.d = d
        outs = outs or [d] * len(ranks)
        assert len(outs) == len(ranks), "one output width per layer"
        self.layers = nn.ModuleList(nn.Linear(d, out) for out in outs)
        self.targets = []
        for k, out in zip(ranks, outs):
            u = torch.linalg.qr(torch.randn(out, out))[0][:, :k]
            v = torch.linalg.qr(torch.randn(d, d))[0][:, :k]
            self.targets.append(2.0 * (u @ v.T) / (u @ v.T).norm())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # what each layer adds to its frozen base output must match its target update
        return sum((((layer(x) - nn.functional.linear(x, layer.weight.detach(), layer.bias.detach()))
                     - x @ target.T) ** 2).sum(-1).mean() / self.d for layer, target in zip(self.layers, self.targets))


def theory_loss(ranks: list[int], needs: list[int], d: int = 16) -> float:
    """The lowest loss a RankNeedToy (targets of energy 4) can reach at these ranks: the energy
    of the directions left unfit, (4 / k) / d for each of a k-need layer's missing ones."""
    return sum(max(0, k - r) * (4.0 / k) / d for k, r in zip(needs, ranks))


def oracle_ranks(r: int, needs: list[int], d: int = 16, r_min: int = 1, outs: list[int] | None = None) -> list[int]:
    """The ranks that minimise `theory_loss` within the parameter budget of uniform rank r,
    each in [r_min, r_max] (dynamic LoRA's: 4 r, and never more than the layer's size). One
    width: the most valuable directions first; several (`outs`): exactly, by dynamic programming
    over the parameters spent (a rank of a wide layer costs more)."""
    if outs is not None and len(set(outs)) > 1:
        return _oracle_by_cost(r, needs, d, r_min, outs)
    r_max = min(4 * r, d)
    ranks = [r_min] * len(needs)
    left = r * len(needs) - sum(ranks)
    # every direction a layer still lacks, most valuable first (ties: the lower layer)
    wanted = sorted(((4.0 / k, -i) for i, k in enumerate(needs) for _ in range(max(0, min(k, r_max) - r_min))),
                    reverse=True)
    for _, neg in wanted[:left]:
        ranks[-neg] += 1
    left -= min(left, len(wanted))
    for i in range(len(ranks)):  # budget beyond every need: spread it, it changes nothing
        extra = min(left, r_max - ranks[i])
        ranks[i] += extra
        left -= extra
    return ranks


def _oracle_by_cost(r: int, needs: list[int], d: int, r_min: int, outs: list[int]) -> list[int]:
    costs = [d + out for out in outs]
    budget = r * sum(costs)
    best: dict[int, tuple[float, list[int]]] = {0: (0.0, [])}  # parameters spent -> (value, ranks)
    for k, cost, out in zip(needs, costs, outs):
        after: dict[int, tuple[float, list[int]]] = {}
        for spent, (value, ranks) in best.items():
            for rank in range(r_min, min(4 * r, d, out) + 1):
                total = spent + rank * cost
                if total > budget:
                    break
                gain = value + min(rank, k) * (4.0 / k) / d
                if total not in after or after[total][0] < gain:
                    after[total] = (gain, [*ranks, rank])
        best, top = {}, -1.0  # keep only spends that buy more than every cheaper one
        for spent in sorted(after):
            if after[spent][0] > top + 1e-12:
                best[spent], top = after[spent], after[spent][0]
    return max(best.values())[1]


def toy_training(model: nn.Module, config, steps: int, lr: float = 1e-2, seed: int = 0, batch: int = 64,
                 d: int = 16):
    """`steps` AdamW steps on fresh Gaussian inputs with the controller; returns (model, controller, opt)."""
    from dynalora import get_lora_model
    from dynalora.allocation import AllocationController

    wrapped = get_lora_model(model, config)
    opt = torch.optim.AdamW(trainable(wrapped), lr=lr)
    controller = AllocationController(wrapped, opt, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        wrapped(torch.randn(batch, d, generator=gen)).backward()
        opt.step()
        controller.after_optimizer_step()
        opt.zero_grad()
    return wrapped, controller, opt
