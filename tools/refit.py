"""An experiment that did not pay (tools/bench_refit.py): sequential re-fit of a pruned model's output
projections to the dense model's outputs.

Measured on SmolLM2-135M one-shot ZipLM members (tools/results/refit_smollm2.md): calibration perplexity
improves a little (1.5x: 106.6 -> 102.9) but held-out perplexity doubles (151.9 -> 308.4; 2x 376 -> 752;
3x 1,484 -> 2,458): the fit follows the calibration windows, dominated by their few massive-activation
tokens, not the model's behaviour. So it is not a product option; kept here, with its tests, to be
reproducible and for the next idea (a weighted or held-out-validated fit).

The OBS database reconstructs every output projection from the *dense* model's own inputs, one module at
a time, as if the rest of the model were unpruned. In the pruned model each projection sees inputs that
upstream pruning has already moved. Here, block by block in model order (as SparseGPT/GPTQ calibrate),
each output projection present in the pruned model (attention output, FFN down) is re-fitted by least
squares so that, on the calibration windows, it reproduces what the *dense* model's projection outputs at
the same place from the dense model's inputs:

    Ŵ = argmin ||W X_d - Ŵ X_p||²  =  W (X_d X_pᵀ) (X_p X_pᵀ + λ I)⁻¹

``X_d``: the dense projection's inputs in the dense model (all columns); ``X_p``: the pruned projection's
inputs in the pruned model (its kept columns), after the blocks before it were re-fitted; ``λ`` = ``damp``
times the mean diagonal of ``X_p X_pᵀ``. Only output projections change (the shapes, the q/k/v and
gate/up weights stay), so the model keeps its shape and latency. Family-agnostic: it needs only the
adapter's layers and output projections, and both models must have the same layers (ZipLM members do;
dropped layers are not supported).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ziplm_deploy.core.errors import InternalError
from ziplm_deploy.models import adapter_for
from ziplm_deploy.models.base import out_in_weight
from ziplm_deploy.prune.hessian import first_layer_inputs, run_layer

REFIT_SCOPES = ("pruned", "all")  # which output projections: those of pruned blocks, or every one present


@torch.no_grad()
def refit_sequential(dense: nn.Module, pruned: nn.Module, windows: torch.Tensor, damp: float = 0.01,
                     scope: str = "pruned", batch_size: int = 4, progress: bool = True) -> nn.Module:
    """Re-fit ``pruned``'s output projections in place (see the module docstring); returns ``pruned``.

    ``scope="pruned"`` re-fits the projections of blocks that lost units; ``"all"`` every projection the
    pruned model has (unpruned ones then also absorb upstream error). Costs about four forward passes
    of the calibration windows.
    """
    if scope not in REFIT_SCOPES:
        raise InternalError(f"unknown refit scope {scope!r}")
    a_dense, a_pruned = adapter_for(dense), adapter_for(pruned)
    layers_d, layers_p = list(a_dense.layers(dense)), list(a_pruned.layers(pruned))
    if len(layers_d) != len(layers_p):
        raise InternalError(f"refit needs the same layers: dense {len(layers_d)}, pruned {len(layers_p)}")
    dense.eval()
    pruned.eval()
    h_d, rest = first_layer_inputs(dense, windows, batch_size)
    h_p = [h.clone() for h in h_d]  # the embeddings are not pruned
    for layer_d, layer_p in tqdm(list(zip(layers_d, layers_p)), desc="sequential refit", unit="layer",
                                 disable=not progress, leave=False):
        projections = [(a_dense.attn_out_proj(layer_d), a_pruned.attn_out_proj(layer_p)),
                       (a_dense.ffn_out_proj(layer_d), a_pruned.ffn_out_proj(layer_p))]
        inputs_d: list[list[torch.Tensor]] = [[], []]
        handles = [proj.register_forward_pre_hook(_collector(inputs_d[k]))
                   for k, (proj, _) in enumerate(projections) if proj is not None]
        try:
            h_d = [run_layer(layer_d, h, args, kwargs) for h, (args, kwargs) in zip(h_d, rest)]
        finally:
            for handle in handles:
                handle.remove()
        for k, (proj_d, proj_p) in enumerate(projections):  # attention first: the FFN's inputs depend on it
            if proj_d is None or proj_p is None or not isinstance(getattr(proj_p, "weight", None), torch.Tensor):
                continue  # block removed, or not a plain projection (a FLOP-factorised one)
            w_d, w_p = out_in_weight(proj_d), out_in_weight(proj_p)
            if scope == "pruned" and w_p.shape == w_d.shape:
                continue
            inputs_p: list[torch.Tensor] = []
            handle = proj_p.register_forward_pre_hook(_collector(inputs_p))
            try:
                for h, (args, kwargs) in zip(h_p, rest):
                    run_layer(layer_p, h, args, kwargs)
            finally:
                handle.remove()
            fitted = _fit(w_d.float(), inputs_d[k], inputs_p, damp)
            _set_weight(proj_p, fitted)
        h_p = [run_layer(layer_p, h, args, kwargs) for h, (args, kwargs) in zip(h_p, rest)]
    return pruned


def _collector(store: list[torch.Tensor]):
    def hook(module, args):
        store.append(args[0].detach().reshape(-1, args[0].shape[-1]).double())

    return hook


def _fit(w: torch.Tensor, xs_d: list[torch.Tensor], xs_p: list[torch.Tensor], damp: float) -> torch.Tensor:
    """``W (Σ X_d X_pᵀ) (Σ X_p X_pᵀ + λ I)⁻¹`` with rows as tokens, in float64 (the Gram matrix of a wide FFN
    input is ill-conditioned): (out, kept)."""
    cross = sum(x_d.T @ x_p for x_d, x_p in zip(xs_d, xs_p))  # (in_d, kept)
    gram = sum(x_p.T @ x_p for x_p in xs_p)  # (kept, kept)
    dead = torch.diagonal(gram) == 0
    gram[dead, dead] = 1.0
    gram.diagonal().add_(damp * float(torch.diagonal(gram).mean()))
    return torch.linalg.solve(gram, (w.double() @ cross).T).T.float().contiguous()


def _set_weight(proj: nn.Module, fitted: torch.Tensor) -> None:
    """Write an (out, in) weight into a Linear, or GPT-2's transposed Conv1D."""
    weight = proj.weight
    value = fitted if weight.shape == fitted.shape else fitted.T
    if weight.shape != value.shape:
        raise InternalError(f"refit weight {tuple(fitted.shape)} does not fit {type(proj).__name__} {tuple(weight.shape)}")
    weight.copy_(value.to(weight.dtype))
