"""Verify's quality: where its figures come from, chosen before any work (``plan_quality``), and the
evaluation of both models: on ``--eval-data`` in PyTorch (``_quality``) or ONNX Runtime (``_ort_quality``), on
held-out calibration windows (``_heldout_quality``), or not measured and why (``not_measured``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..core.errors import UserError
from ..core.manifest import MANIFEST_FILE
from .inputs import Resolved, _arch_and_shape

if TYPE_CHECKING:
    from .measure import VerifyOptions


@dataclass(frozen=True)
class QualityPlan:
    """Where verify's quality figures come from, chosen (and the manifest read) before any work."""

    kind: str  # "eval-data" | "heldout-calibration" | "skip" (not measured: ``note`` says why) | "none" (no source)
    data: str | None = None  # --eval-data, or the calibration data recorded in the candidate's manifest
    seq: int = 0  # heldout-calibration: the prune run's window length,
    calibration_windows: int = 0  # the number of windows it drew
    seed: int = 0  # and its seed
    note: str = ""  # skip: the report's quality.note


def plan_quality(paths: dict[str, str], kinds: dict[str, str], opts: VerifyOptions) -> QualityPlan:
    """``--no-eval``: skip; ``--eval-data``: that data; else held-out windows of the calibration text a pruned
    member's manifest records (``options``: the prune run's ``data``, ``seq_len``, ``windows``, ``seed``) when
    it can be measured, a skip saying why when it cannot, and "none" for a candidate that records no calibration
    data (an ONNX file, a directory without a manifest or made by another method). A manifest that records
    calibration data with unusable options is refused (``UserError``)."""
    if opts.no_eval:
        return QualityPlan("skip", note="quality not measured: --no-eval")
    if opts.eval_data:
        return QualityPlan("eval-data", str(opts.eval_data))
    manifest_file = Path(paths["candidate"]) / MANIFEST_FILE
    if kinds["candidate"] != "directory" or not manifest_file.is_file():
        return QualityPlan("none")
    from ..core.arch import arch_from_dir
    from ..core.manifest import ModelManifest
    from ..prune.data import BUILTIN_TEXTS
    from ..prune.family import METHODS

    manifest = ModelManifest.load(manifest_file)
    options = manifest.options
    data = options.get("data")
    own_split = manifest.method == "flop" and "windows" not in options  # the `flop` command's, not `prune --method flop`
    if manifest.method not in METHODS or data is None or own_split:  # only prune runs draw calibration windows
        return QualityPlan("none")
    values = {k: options.get(k) for k in ("seq_len", "windows", "seed")}
    bad = [f"options.{k} is {v!r}" for k, v in values.items()
           if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "seed" else 1)]
    if not isinstance(data, str) or not data:
        bad.insert(0, f"options.data is {data!r}")
    if bad:
        raise UserError(f"{manifest_file}: {', '.join(bad)}: not the calibration of a prune run",
                        "regenerate the member with `ziplm-deploy prune`, or pass --eval-data or --no-eval")
    if "engine" in kinds.values():
        return QualityPlan("skip", note="quality not measured: the baseline is a TensorRT engine "
                                        "(verify the ONNX files for quality)")
    if not arch_from_dir(paths["candidate"]).is_decoder:
        return QualityPlan("skip", note=f"quality not measured: held-out calibration text measures perplexity, and "
                                        f"{paths['candidate']} is not a decoder (pass --eval-data with labelled text)")
    if data not in BUILTIN_TEXTS and not Path(data).exists():
        return QualityPlan("skip", data, note=f"quality not measured: the calibration data {data} recorded in "
                                              f"{manifest_file} is gone (pass --eval-data)")
    return QualityPlan("heldout-calibration", data, values["seq_len"], values["windows"], values["seed"])


def _quality(models: dict[str, Resolved], opts: VerifyOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """Perplexity (causal LM) or accuracy (classifier) of both directories on ``eval_data`` (PyTorch)."""
    from ..core.arch import arch_from_dir
    from ..models import load_model
    from ..models.tokenizer import load_tokenizer
    from ..core.labelled import read_labelled
    from ..prune.evaluate import accuracy, perplexity

    values, metric = {}, None
    for role, r in models.items():
        if r.kind != "directory":
            raise UserError(f"--eval-data needs both models as directories; --{role} is {r.kind}")
        tokenizer = load_tokenizer(r.source)
        if tokenizer is None:
            raise UserError(f"{r.source} has no tokenizer files", "--eval-data needs the tokenizer in the directory")
        model = load_model(r.source)
        log(f"quality of the {role} on {opts.eval_data}")
        if arch_from_dir(r.source).is_decoder:
            from ..prune.data import read_texts, token_windows

            windows = token_windows(tokenizer, read_texts(opts.eval_data), opts.eval_seq)[: opts.eval_windows]
            metric, values[role] = "perplexity", perplexity(model, windows, progress=False)
        else:
            texts, labels = read_labelled(opts.eval_data)
            metric, values[role] = "accuracy", accuracy(model, tokenizer, texts, labels)
    return {"metric": metric, "baseline": round(values["baseline"], 6), "candidate": round(values["candidate"], 6),
            "data": str(opts.eval_data), "source": "eval", **_eval_data_origin(opts)}


def _eval_data_origin(opts: VerifyOptions) -> dict[str, str]:
    return {"data_kind": "eval-data", "data_source": f"--eval-data {opts.eval_data}"}


def not_measured(note: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The quality block of a verify that did not measure quality: why (``note``), no figures (the gate's
    quality budgets fail closed on it)."""
    log(note)
    return {"metric": None, "baseline": None, "candidate": None, "note": note}


def _heldout_quality(models: dict[str, Resolved], plan: QualityPlan, opts: VerifyOptions, in_torch: bool,
                     log: Callable[[str], None]) -> dict[str, Any]:
    """Perplexity of both on up to ``eval_windows`` held-out windows of the candidate's calibration text, cut
    with its tokenizer (the prune run's) as the run cut it: in PyTorch (``in_torch``) or in ONNX Runtime.
    Windows that cannot be had (data gone or changed, none held out, no tokenizer) leave it not measured."""
    from ..models.tokenizer import load_tokenizer
    from ..prune.data import heldout_calibration_windows

    cand = models["candidate"]
    tokenizer = load_tokenizer(cand.source)
    if tokenizer is None:
        return not_measured(f"quality not measured: {cand.source} has no tokenizer files to cut its calibration "
                            f"text with (pass --eval-data)", log)
    try:
        windows = heldout_calibration_windows(tokenizer, plan.data, plan.seq, plan.calibration_windows, plan.seed,
                                              opts.eval_windows)
    except UserError as e:
        return not_measured(f"quality not measured: {e.message}", log)
    arch, _ = _arch_and_shape(models["baseline"])
    if arch is not None and int(windows.max()) >= arch.vocab:
        return not_measured(f"quality not measured: the candidate's tokenizer gives token ids beyond the baseline's "
                            f"vocabulary of {arch.vocab} (pass --eval-data)", log)
    source = (f"held-out calibration text {plan.data} ({len(windows)} windows of {plan.seq} tokens not used for "
              f"calibration)")
    values = {}
    if in_torch:
        from ..models import load_model
        from ..prune.evaluate import perplexity

        for role, r in models.items():
            log(f"quality of the {role} on {source}")
            values[role] = perplexity(load_model(r.source), windows, progress=False)
        engine: dict[str, Any] = {"source": "eval"}
    else:
        from .ort_quality import ort_perplexity

        for role, r in models.items():
            log(f"quality of the {role} ({r.precision}) in ONNX Runtime on {source}")
            values[role] = ort_perplexity(r.onnx, windows.numpy(), threads=opts.threads)
        engine = {"source": "onnxruntime", "precision": {role: r.precision for role, r in models.items()}}
    return {"metric": "perplexity", "baseline": round(values["baseline"], 6), "candidate": round(values["candidate"], 6),
            "data": plan.data, **engine, "windows": int(len(windows)), "seq": plan.seq,
            "data_kind": "heldout-calibration", "data_source": source,
            "calibration": {"windows": plan.calibration_windows, "seed": plan.seed}}


def _ort_quality(models: dict[str, Resolved], opts: VerifyOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """Perplexity (decoder) or accuracy (classifier) of both ONNX graphs (a directory: its validated export) in
    ONNX Runtime on ``eval_data``, tokenized with the candidate's tokenizer.json (torch-free): a quantized file
    is measured as shipped."""
    from .ort_quality import ort_accuracy, ort_perplexity, read_texts, text_windows

    tokenizer_dir = _tokenizer_dir(models["candidate"])
    arch, _ = _arch_and_shape(models["candidate"])
    if arch is not None and not arch.is_decoder:
        from ..core.labelled import read_labelled

        texts, labels = read_labelled(opts.eval_data)
        metric, extra = "accuracy", {"examples": len(labels)}
        measure = lambda onnx: ort_accuracy(onnx, tokenizer_dir, texts, labels, threads=opts.threads)  # noqa: E731
    else:
        windows = text_windows(tokenizer_dir, read_texts(opts.eval_data), opts.eval_seq, opts.eval_windows)
        metric, extra = "perplexity", {"windows": int(len(windows)), "seq": opts.eval_seq}
        measure = lambda onnx: ort_perplexity(onnx, windows, threads=opts.threads)  # noqa: E731
    values = {}
    for role, r in models.items():
        log(f"{metric} of the {role} ({r.precision}) in ONNX Runtime on {opts.eval_data}")
        values[role] = measure(r.onnx)
    return {"metric": metric, "baseline": round(values["baseline"], 6), "candidate": round(values["candidate"], 6),
            "data": str(opts.eval_data), "source": "onnxruntime", **extra,
            "precision": {role: r.precision for role, r in models.items()}, **_eval_data_origin(opts)}


def _tokenizer_dir(r: Resolved) -> Path:
    """Where the tokenizer.json of a model is: its directory, the ONNX file's recorded source, or beside it."""
    candidates = [Path(r.source)] if r.kind == "directory" else []
    if r.metadata and r.metadata.get("ziplm_source"):
        candidates.append(Path(r.metadata["ziplm_source"]))
    if r.onnx is not None:
        candidates.append(Path(r.source).parent if r.kind != "directory" else r.onnx.parent)
    for d in candidates:
        if (d / "tokenizer.json").is_file():
            return d
    raise UserError(f"no tokenizer.json for {r.source} (looked in {', '.join(map(str, candidates))})",
                    "keep the model's tokenizer.json beside the ONNX file, or its source directory in place")
