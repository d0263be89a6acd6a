"""FLOP (Wang et al., asappresearch/flop): low-rank factorisation with hard-concrete rank gates.

A Linear ``y = x Wᵀ + b`` (W: out×in) becomes ``y = ((x P) · z) Q + b`` with P: in×r, Q: r×out,
initialised from the SVD of the pretrained W (``W = U S Vᵀ`` -> ``P = V_r √S_r``, ``Q = √S_r U_rᵀ``),
so with every rank kept and z = 1 the layer equals the dense one. Gates z are hard-concrete
(l = −0.1, r = 1.1, β = 1); an L0 target sparsity, warmed up linearly, enters the loss through
Lagrange multipliers that are *maximised*: ``λ1 (ŝ − t) + λ2 (ŝ − t)²``. At the end the ranks with a
non-zero deterministic gate are kept, z is folded into Q, and the layer becomes two thin Linears.

FLOP factorises the FFN Linears (gate / up / down) here; attention is pruned structurally by ZipLM. The
kept rank of every factorised Linear is recorded in the model's shape (``ranks``), so save/load, ONNX
export, the latency table (low-rank entries) and verify handle FLOP models like any pruned model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..core.errors import UserError
from ..models.surgery import LowRankLinear

LIMIT_L, LIMIT_R, BETA = -0.1, 1.1, 1.0
EPS = 1e-6


def default_rank(n_in: int, n_out: int) -> int:
    """The rank with the same parameter count as the dense matrix: ``in·out / (in + out)``."""
    return max(1, (n_in * n_out) // (n_in + n_out))


class HardConcreteGates(nn.Module):
    """``n`` hard-concrete gates (Louizos et al.) with ``log_α`` initialised around ``log(1−m) − log(m)``."""

    def __init__(self, n: int, init_mean: float = 0.5, init_std: float = 0.01, beta: float = BETA,
                 limit_l: float = LIMIT_L, limit_r: float = LIMIT_R):
        super().__init__()
        if not 0 < init_mean < 1:
            raise UserError(f"gate init mean {init_mean} must be in (0, 1)")
        self.beta, self.limit_l, self.limit_r = beta, limit_l, limit_r
        mean = math.log(1 - init_mean) - math.log(init_mean)
        self.log_alpha = nn.Parameter(torch.empty(n).normal_(mean, init_std))

    @property
    def n(self) -> int:
        return self.log_alpha.numel()

    def prob_nonzero(self) -> torch.Tensor:
        """``P(z_i > 0) = σ(log_α_i − β·log(−l/r))`` per gate."""
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-self.limit_l / self.limit_r))

    def expected_l0(self) -> torch.Tensor:
        return self.prob_nonzero().sum()

    def sample(self, generator: torch.Generator | None = None, draws: int | None = None) -> torch.Tensor:
        """A training-time draw (``draws`` of them: shape (draws, n)): ``s = σ((log u − log(1−u) + log_α)/β)``,
        stretched to (l, r), clamped to [0, 1]."""
        shape = (self.n,) if draws is None else (draws, self.n)
        u = torch.rand(shape, generator=generator, device=self.log_alpha.device).clamp(EPS, 1 - EPS)
        s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + self.log_alpha) / self.beta)
        return (s * (self.limit_r - self.limit_l) + self.limit_l).clamp(0.0, 1.0)

    def deterministic(self) -> torch.Tensor:
        """The eval mask (as in the FLOP code): ``σ(0.8·log_α/β)`` with the ``round(n − E[L0])`` smallest set to 0."""
        soft = torch.sigmoid(self.log_alpha.detach() / self.beta * 0.8)
        zeros = round(self.n - float(self.expected_l0().detach()))
        if zeros > 0:
            soft = soft.clone()
            soft[torch.topk(soft, k=zeros, largest=False).indices] = 0.0
        return soft

    def forward(self) -> torch.Tensor:
        return self.sample() if self.training else self.deterministic()


class FactorizedLinear(nn.Module):
    """``y = ((x P) · z) Q + b``, from a dense (out, in) weight by truncated SVD."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rank: int | None = None,
                 gates: bool = True, init_mean: float = 0.5):
        super().__init__()
        n_out, n_in = weight.shape
        rank = default_rank(n_in, n_out) if rank is None else rank
        if not 1 <= rank <= min(n_in, n_out):
            raise UserError(f"rank {rank} must be between 1 and {min(n_in, n_out)}")
        u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
        root = s[:rank].sqrt()
        self.P = nn.Parameter((vh[:rank].T * root).to(weight.dtype))  # in × r
        self.Q = nn.Parameter((root[:, None] * u[:, :rank].T).to(weight.dtype))  # r × out
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.gates = HardConcreteGates(rank, init_mean=init_mean).to(weight.device) if gates else None
        self.in_features, self.out_features, self.rank = n_in, n_out, rank

    @staticmethod
    def from_module(module: nn.Module, rank: int | None = None, gates: bool = True,
                    init_mean: float = 0.5) -> "FactorizedLinear":
        """From an ``nn.Linear`` or a GPT-2 ``Conv1D`` (weight stored transposed)."""
        from ..models.base import out_in_weight

        return FactorizedLinear(out_in_weight(module), getattr(module, "bias", None), rank, gates, init_mean)

    def mask(self) -> torch.Tensor | None:
        return None if self.gates is None else self.gates()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.P
        z = self.mask()
        if z is not None:
            h = h * z.to(h.dtype)
        y = h @ self.Q
        return y + self.bias if self.bias is not None else y

    def expected_params(self) -> torch.Tensor:
        """Expected parameter count of the factorised weight: ``(in + out) · E[L0]``."""
        rank = self.gates.expected_l0() if self.gates is not None else torch.tensor(float(self.rank))
        return (self.in_features + self.out_features) * rank

    @torch.no_grad()
    def kept_ranks(self) -> list[int]:
        z = self.gates.deterministic() if self.gates is not None else torch.ones(self.rank)
        return torch.nonzero(z > 0).flatten().tolist()

    @torch.no_grad()
    def to_linears(self) -> LowRankLinear:
        """Two thin Linears ``in → r'`` then ``r' → out`` (z folded into the second), r' = kept ranks."""
        keep = self.kept_ranks()
        if not keep:
            raise UserError("every rank of a factorised layer is closed", "lower the target sparsity")
        z = self.gates.deterministic() if self.gates is not None else torch.ones(self.rank)
        second = (z[keep, None].to(self.Q.dtype) * self.Q[keep]).T
        bias = None if self.bias is None else self.bias.detach()
        return LowRankLinear.from_factors(self.P[:, keep].T.detach(), second.detach(), bias)


def ffn_linear_names(model: nn.Module) -> list[str]:
    """Module names of the FFN Linears (gate / up / down) of every layer that still has its FFN."""
    from ..models import adapter_for

    adapter = adapter_for(model)
    by_id = {id(m): name for name, m in model.named_modules()}
    names = []
    for layer in adapter.layers(model):
        for role in sorted(adapter.ffn_linear_paths):
            module = adapter.ffn_linear(layer, role)
            if module is not None:
                names.append(by_id[id(module)])
    return names


def factorize(model: nn.Module, names: list[str] | None = None, rank: int | None = None,
              gates: bool = True, init_mean: float = 0.5) -> list[str]:
    """Replace FFN Linears of ``model`` (the named ones; default all, see ``ffn_linear_names``) by
    ``FactorizedLinear``; returns the names."""
    allowed = ffn_linear_names(model)
    names = allowed if names is None else names
    done = []
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, child, None)
        if module is None or not hasattr(module, "weight") or module.weight.ndim != 2:
            raise UserError(f"{name} is not a Linear layer of the model")
        if name not in allowed:
            raise UserError(f"{name} is not an FFN Linear: FLOP here factorises FFN gate/up/down projections",
                            "pass FFN Linear names, or none for all of them")
        setattr(parent, child, FactorizedLinear.from_module(module, rank, gates, init_mean))
        done.append(name)
    return done


def factorized_layers(model: nn.Module) -> list[FactorizedLinear]:
    return [m for m in model.modules() if isinstance(m, FactorizedLinear)]


def expected_sparsity(layers: list[FactorizedLinear]) -> torch.Tensor:
    """``ŝ = 1 − Σ expected params / Σ dense params`` over the factorised layers."""
    if not layers:
        raise UserError("the model has no factorised layers")
    dense = sum(m.in_features * m.out_features for m in layers)
    return 1 - torch.stack([m.expected_params() for m in layers]).sum() / dense


def target_at(step: int, target: float, warmup: int) -> float:
    """The target sparsity warmed up linearly from 0 over ``warmup`` steps."""
    return target if warmup <= 0 else target * min(1.0, step / warmup)


class Lagrangian(nn.Module):
    """``λ1 (ŝ − t) + λ2 (ŝ − t)²``. Minimised by the model, *maximised* in λ: ``ascend()`` flips the
    multipliers' gradients so one optimiser step on them is a gradient-ascent step."""

    def __init__(self):
        super().__init__()
        self.lambda_1 = nn.Parameter(torch.zeros(()))
        self.lambda_2 = nn.Parameter(torch.zeros(()))

    def forward(self, sparsity: torch.Tensor, target: float) -> torch.Tensor:
        gap = sparsity - target
        return self.lambda_1 * gap + self.lambda_2 * gap * gap

    def ascend(self) -> None:
        for p in (self.lambda_1, self.lambda_2):
            if p.grad is not None:
                p.grad.neg_()


def finalize(model: nn.Module) -> dict[str, int]:
    """Replace every ``FactorizedLinear`` by a ``LowRankLinear`` (closed ranks removed) and record the
    kept ranks in the model's shape (``config.ziplm_shape``); returns the kept rank per module name."""
    from ..core.arch import SHAPE_CONFIG_KEY
    from ..models import adapter_for

    ranks = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, FactorizedLinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            thin = module.to_linears()
            setattr(parent, child, thin)
            ranks[name] = thin.rank
    setattr(model.config, SHAPE_CONFIG_KEY, adapter_for(model).shape_of(model).to_json())
    return ranks


def train_flop(model: nn.Module, windows: torch.Tensor, target: float, steps: int, warmup: int | None = None,
               lr: float = 1e-4, gate_lr: float = 0.1, lambda_lr: float = 0.01, batch_size: int = 4,
               seed: int = 0, log=None) -> list[dict[str, float]]:
    """Plain single-device FLOP training of a model with factorised layers: LM loss + Lagrangian penalty
    towards ``target`` expected sparsity (warmed up over ``warmup`` steps, default half of ``steps``).
    Weights and gates are minimised (AdamW / Adam), λ1, λ2 maximised (Adam on flipped gradients)."""
    from .losses import lm_loss
    from .trainer import micro_batch_indices

    if not 0 < target < 1:
        raise UserError(f"target sparsity {target} must be in (0, 1)")
    layers = factorized_layers(model)
    if not layers:
        raise UserError("the model has no factorised layers", "call factorize(model, names) first")
    warmup = steps // 2 if warmup is None else warmup
    gates = [m.gates.log_alpha for m in layers if m.gates is not None]
    gate_ids = {id(p) for p in gates}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in gate_ids]
    opt = torch.optim.AdamW(weights, lr=lr)
    opt_gates = torch.optim.Adam(gates, lr=gate_lr)
    lagrangian = Lagrangian()
    opt_lambda = torch.optim.Adam(lagrangian.parameters(), lr=lambda_lr)
    torch.manual_seed(seed)
    model.train()
    history = []
    for step in range(steps):
        ids = windows[micro_batch_indices(len(windows), batch_size, 1, 0, step, seed)].to(layers[0].P.device)
        task = lm_loss(model(input_ids=ids, use_cache=False).logits, ids)
        sparsity = expected_sparsity(layers)
        t = target_at(step, target, warmup)
        penalty = lagrangian(sparsity, t)
        for o in (opt, opt_gates, opt_lambda):
            o.zero_grad(set_to_none=True)
        (task + penalty).backward()
        lagrangian.ascend()
        for o in (opt, opt_gates, opt_lambda):
            o.step()
        row = {"step": step + 1, "task": float(task.detach()), "expected_sparsity": float(sparsity.detach()),
               "target": t, "lambda_1": float(lagrangian.lambda_1.detach()),
               "lambda_2": float(lagrangian.lambda_2.detach())}
        history.append(row)
        if log is not None:
            log(row)
    model.eval()
    return history


@dataclass(frozen=True)
class FlopConfig:
    """What ``flop_prune`` does: factorise every FFN Linear at ``rank`` (default: the parameter-neutral
    rank ``in·out/(in+out)``), then train towards ``target`` expected sparsity of their parameters."""

    target: float
    steps: int = 200
    warmup: int | None = None  # default: half of steps
    rank: int | None = None
    init_drop: float = 0.5  # the gates' initial drop rate (FLOP's droprate_init); small: start near the dense model
    lr: float = 1e-4
    gate_lr: float = 0.1
    lambda_lr: float = 0.01
    batch_size: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.target < 1:
            raise UserError(f"target sparsity {self.target} must be in (0, 1)", "e.g. --target-sparsity 0.5")
        if self.steps < 1 or self.batch_size < 1:
            raise UserError("FLOP needs --steps >= 1 and --batch-size >= 1")
        if not 0 < self.init_drop < 1:
            raise UserError(f"initial drop rate {self.init_drop} must be in (0, 1)", "e.g. --init-drop 0.5")
        if self.rank is not None and self.rank < 1:
            raise UserError(f"--rank must be >= 1, got {self.rank}")


@dataclass
class FlopResult:
    ranks: dict[str, int]  # kept rank per factorised module name
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def sparsity(self, model: nn.Module) -> float:
        """Parameter sparsity of the finalised factorised Linears vs their dense matrices."""
        thin = [m for m in model.modules() if isinstance(m, LowRankLinear)]
        dense = sum(m.in_features * m.out_features for m in thin)
        return 1 - sum(m.rank * (m.in_features + m.out_features) for m in thin) / dense

    def to_json(self) -> dict[str, Any]:
        return {"ranks": self.ranks, "seconds": round(self.seconds, 1), "history": self.history}


def flop_prune(model: nn.Module, windows: torch.Tensor, config: FlopConfig,
               log: Callable[[dict[str, float]], None] | None = None) -> FlopResult:
    """FLOP end to end on ``model`` (in place): factorise its FFN Linears, train with the L0 penalty,
    and finalise to ``LowRankLinear`` pairs with the kept ranks recorded in the model's shape."""
    if any(isinstance(m, (LowRankLinear, FactorizedLinear)) for m in model.modules()):
        raise UserError("the model is already factorised", "run flop on a model that was not through flop")
    start = time.perf_counter()
    torch.manual_seed(config.seed)  # the gates' initial log-alpha noise too
    factorize(model, rank=config.rank, init_mean=config.init_drop)
    history = train_flop(model, windows, config.target, config.steps, config.warmup, lr=config.lr,
                         gate_lr=config.gate_lr, lambda_lr=config.lambda_lr, batch_size=config.batch_size,
                         seed=config.seed, log=log)
    ranks = finalize(model)
    return FlopResult(ranks, history, time.perf_counter() - start)


def sparsity_for_speedup(latency: Any, roles: tuple[str, ...], target: float) -> tuple[float | None, float]:
    """``(sparsity, max_speedup)``: the FFN parameter sparsity at which factorising every FFN Linear uniformly is
    predicted (``latency``: a table or ``prune.search.LatencyModel`` with low-rank entries) to reach ``target`` (a
    speedup over its dense model), and the speedup of rank 1 everywhere. The sparsity is None when even rank 1 is
    too slow. FLOP's L0 gates then aim at that parameter sparsity and may spread the ranks unevenly: the member's
    speedup is the prediction of the ranks it ends with, not this one."""
    from dataclasses import replace

    from ..core.shape import ModelShape

    dense = latency.dense_shape()
    arch = latency.arch
    dense_ms = latency.predict(dense)

    def speedup(rank: int) -> float:
        ranks = tuple(sorted((role, rank) for role in roles))
        return dense_ms / latency.predict(ModelShape(tuple(replace(layer, ranks=ranks) for layer in dense.layers),
                                                     dense.vocab))

    most = speedup(1)
    if most < target:
        return None, most
    lo, hi = 1, default_rank(arch.hidden, arch.ffn)
    while lo < hi:  # the largest rank still predicted at the target (fewer kept ranks are faster)
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if speedup(mid) >= target else (lo, mid - 1)
    kept = lo * (arch.hidden + arch.ffn) / (arch.hidden * arch.ffn)
    return min(0.99, max(0.01, 1.0 - kept)), most
