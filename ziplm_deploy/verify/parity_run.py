"""Verify's parity: the candidate's reference, chosen before any work (``plan_parity``), and the candidate run
against it in the deployment runtime (``_parity``; the comparison rules are ``verify.parity``'s)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..core.errors import UserError
from ..core.manifest import file_sha256
from ..core.parity import ExportReference, load_reference, reference_path
from .inputs import FALLBACK_VOCAB, Resolved, _arch_and_shape, dir_digest, onnx_info

if TYPE_CHECKING:
    from .measure import VerifyOptions

PLAIN_GRAPHS = ("encoder", "decoder", "prefill")  # graphs PyTorch can be run on without a KV cache


@dataclass(frozen=True)
class ParityPlan:
    """The candidate's parity reference, chosen (and its files checked) before timing."""

    reference: str  # "pytorch" | "export-reference" | "onnxruntime-cpu-unoptimised" | "none"
    path: str | None = None  # model directory / reference file / source ONNX
    sha256: str | None = None  # its content hash
    note: str = ""  # why this reference (why not PyTorch), or why none
    stored: ExportReference | None = None


def plan_parity(candidate: str, kind: str) -> ParityPlan:
    """PyTorch when the model (or the ONNX file's recorded, unchanged source directory) is here with torch;
    else the export reference beside the ONNX file (its hash checked: a mismatch is a ``UserError``); else none."""
    p = Path(candidate)
    if kind == "engine":
        return ParityPlan("onnxruntime-cpu-unoptimised", note="the engine vs its source ONNX file in ONNX Runtime CPU")
    if kind == "directory":
        return ParityPlan("pytorch", str(p), dir_digest(p), "the candidate directory in PyTorch")
    info = onnx_info(p)
    source, why_not = _torch_source(info.metadata)
    if source is not None:
        return ParityPlan("pytorch", str(source), info.metadata["ziplm_source_sha256"],
                          "the source model directory recorded at export, unchanged since")
    ref_file = reference_path(p)
    if not ref_file.is_file():
        return ParityPlan("none", note=f"no export reference {ref_file.name} beside {p} and {why_not}")
    stored = load_reference(ref_file)
    if set(stored.inputs) != set(info.inputs):
        raise UserError(f"export reference {ref_file} was written for inputs {sorted(stored.inputs)}, "
                        f"but {p} takes {sorted(info.inputs)}",
                        "keep each FILE.onnx with its own FILE.onnx.reference.npz, or re-export")
    return ParityPlan("export-reference", str(ref_file), file_sha256(ref_file), why_not, stored)


def _torch_source(meta: dict[str, str]) -> tuple[Path | None, str]:
    """(the source directory to run in PyTorch, or None and why not)."""
    src = meta.get("ziplm_source")
    if not src:
        return None, "no source model directory recorded in its metadata"
    if meta.get("ziplm_graph") not in PLAIN_GRAPHS:
        return None, f"its {meta.get('ziplm_graph')!r} graph needs a KV cache PyTorch is not run with"
    if not (Path(src) / "config.json").is_file():
        return None, f"its source directory {src} is not here"
    try:
        import torch  # noqa: F401
    except ImportError:
        return None, "torch is not installed"
    if dir_digest(src) != meta.get("ziplm_source_sha256"):
        return None, f"its source directory {src} changed since export"
    return Path(src), ""


def _parity(backend: Any, cand: Resolved, plan: ParityPlan, opts: VerifyOptions,
            log: Callable[[str], None]) -> dict[str, Any]:
    """Per-output parity of the candidate in the runtime against ``plan``'s reference (never against itself);
    a quantized candidate against an fp32 reference is judged by top-1 agreement of its logits."""
    from .parity import compare, compare_top1

    extra: dict[str, Any] = {"file_matches_export": None}
    if plan.reference == "none":
        return _parity_block(plan, opts, [], extra)
    if plan.reference == "export-reference":
        log(f"parity: candidate in the runtime vs the export reference {plan.path}")
        with backend.load(cand.file) as session:
            got = session.run(plan.stored.inputs)
        want = plan.stored.outputs
        extra["file_matches_export"] = file_sha256(cand.file) == plan.stored.onnx_sha256
        if not extra["file_matches_export"]:
            log(f"warning: {cand.file} changed since export (its sha256 differs from the reference's)")
    else:
        got, want, plan = _run_against(backend, cand, plan, opts, log)
    top1 = cand.precision != "fp32" and plan.reference in ("pytorch", "export-reference")
    if top1:
        min_top1, source = _min_top1(cand, opts)
        log(f"parity: the candidate is {cand.precision}: judged by top-1 agreement of its logits with the fp32 "
            f"reference (at least {min_top1:.0%}, {source}), not by 1e-3 parity")
        rows = compare_top1(got, want, min_top1)
        if not rows:
            raise UserError(f"parity: a quantized candidate is judged by top-1 agreement of its logits, but the "
                            f"reference has no logits (outputs: {', '.join(want)})", "verify a causal LM or classifier")
    else:
        rows = compare(got, want, opts.atol, opts.rtol)
    if not rows:
        raise UserError("parity: the reference has no outputs")
    extra["tolerance"] = ({"kind": "top1-agreement", "min_top1_agreement": min_top1, "source": source,
                           "candidate": cand.precision, "reference_precision": "fp32",
                           "judged": [r["name"] for r in rows]} if top1
                          else {"kind": "max-abs", "atol": opts.atol, "rtol": opts.rtol})
    return _parity_block(plan, opts, rows, extra)


def _min_top1(cand: Resolved, opts: VerifyOptions) -> tuple[float, str]:
    """The top-1 tolerance of a quantized candidate and where it comes from."""
    from ..core.checks import number
    from ..runtime.quantize import DEFAULT_MIN_TOP1, quality_of_metadata

    if opts.min_top1 is not None:
        return opts.min_top1, "option"
    record = quality_of_metadata(cand.metadata or {}, cand.source)
    if record is None or "min_top1_agreement" not in record:
        return DEFAULT_MIN_TOP1, "default"
    value = number(record["min_top1_agreement"], cand.source, "metadata ziplm_quality.min_top1_agreement", lo=0.0, hi=1.0)
    return value, "the tolerance it was exported with"


def _run_against(backend: Any, cand: Resolved, plan: ParityPlan, opts: VerifyOptions,
                 log: Callable[[str], None]) -> tuple[dict, dict, ParityPlan]:
    """Synthetic inputs of the verify shape through the candidate and through PyTorch / the source ONNX."""
    from ..runtime import get_backend
    from ..runtime.feeds import synthetic_feeds
    from .parity import torch_outputs

    arch, _ = _arch_and_shape(cand)
    dims = {"batch": opts.batch, "seq": opts.seq, "past": 0, "total": opts.seq}
    with backend.load(cand.file) as session:
        feeds = synthetic_feeds(session.inputs, dims, arch.vocab if arch else FALLBACK_VOCAB, seed=opts.seed + 1)
        got = session.run(feeds)
    if plan.reference == "pytorch":
        log(f"parity: candidate in the runtime vs PyTorch on {plan.path}")
        return got, torch_outputs(plan.path, feeds), plan
    if cand.onnx is None:
        raise UserError(f"no source ONNX for {cand.source}: parity cannot be checked",
                        "keep the engine's source ONNX (recorded in its sidecar) next to it")
    log("parity: candidate in the runtime vs ONNX Runtime CPU without graph optimisations")
    with get_backend("ort-cpu", threads=1, opt_level="disabled").load(cand.onnx) as ref:
        want = ref.run(feeds)
    return got, want, ParityPlan(plan.reference, str(cand.onnx), file_sha256(cand.onnx), plan.note)


def _parity_block(plan: ParityPlan, opts: VerifyOptions, rows: list[dict[str, Any]],
                  extra: dict[str, Any]) -> dict[str, Any]:
    return {"reference": plan.reference, "reference_path": plan.path, "reference_sha256": plan.sha256,
            "note": plan.note, "atol": opts.atol, "rtol": opts.rtol, "ok": bool(rows) and all(r["ok"] for r in rows),
            "outputs": rows, **extra}
