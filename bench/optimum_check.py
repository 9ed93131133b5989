"""Does optimum load our ONNX as a user would, and generate what PyTorch generates?

Runs in its own venv (optimum-onnx 0.1.0 pins transformers < 4.58; ours is 5.x), so it imports nothing of
prunekit: it reads the artifact's prunekit.json for the prompts and the greedy tokens that export recorded
from the PyTorch model (the reference verify checks every runtime against), loads `onnx/model.onnx` with
`ORTModelForCausalLM.from_pretrained(artifact, subfolder="onnx")` on the CPU, and runs `generate` greedily.
A prompt passes when optimum's tokens equal the reference's; generation may stop early at the EOS token, as
it does for a user (the reference runs its full length), and then the tokens up to it must equal.

    make optimum-check    # or: .venv-optimum/bin/python bench/optimum_check.py ARTIFACT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Run as a script, Python puts bench/ first on the path, where config.py and models.py shadow the modules of
# those names that transformers imports.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

INSTALL = (
    'python3 -m venv .venv-optimum && .venv-optimum/bin/pip install "optimum-onnx[onnxruntime]==0.1.0" '
    "torch==2.13.0 (or: make optimum-check)"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", help="an artifact directory written by prunekit export (with onnx/model.onnx)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    art = Path(args.artifact)
    manifest = art / "prunekit.json"
    if not (art / "onnx" / "model.onnx").is_file() or not manifest.is_file():
        sys.exit(
            f"{art} is not an exported artifact with ONNX (no onnx/model.onnx or prunekit.json); build one with "
            "`make artifacts` or `prunekit export`."
        )
    onnx = json.loads(manifest.read_text()).get("onnx") or {}
    if onnx.get("cache", "concat") != "concat":
        sys.exit(
            f"{art}'s graph keeps its cache in place (--onnx-cache {onnx['cache']}), which optimum does not drive; "
            "export the graph optimum runs with `prunekit export PRUNED --out DIR --onnx-cache concat`."
        )
    try:
        from importlib.metadata import version

        import onnxruntime as ort
        import optimum.onnxruntime as oo
        import torch
        import transformers
    except ImportError as e:
        sys.exit(f"{e}: run this with the optimum venv's python; install it with:\n  {INSTALL}")
    torch.set_num_threads(args.threads)
    ref = json.loads(manifest.read_text())["reference"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    t0 = time.time()
    model = oo.ORTModelForCausalLM.from_pretrained(
        art, subfolder="onnx", file_name="model.onnx", provider="CPUExecutionProvider", session_options=opts
    )
    load_s = time.time() - t0
    try:
        tok = transformers.AutoTokenizer.from_pretrained(art)
    except Exception as e:  # noqa: BLE001 (the tokenizer only prints text; the check is on token ids)
        print(f"(tokenizer not loadable by transformers {transformers.__version__}: {e}; ids only)")
        tok = None
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    print(
        f"optimum-onnx {version('optimum-onnx')}, optimum {version('optimum')}, transformers "
        f"{transformers.__version__}, onnxruntime {ort.__version__}; {type(model).__name__} loaded in {load_s:.1f} s "
        f"(KV cache: {model.can_use_cache})"
    )
    ok = 0
    for prompt, ids, want in zip(ref["prompts"], ref["prompt_ids"], ref["tokens"]):
        x = torch.tensor([ids])
        out = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=ref["new_tokens"],
            do_sample=False,
            pad_token_id=next(iter(eos), 0),
        )
        got = out[0, len(ids) :].tolist()
        early = len(got) < len(want) and bool(got) and got[-1] in eos
        match = got == want or (early and got == want[: len(got)])
        ok += match
        text = tok.decode(got) if tok is not None else ""
        print(f"{'MATCH' if match else 'DIFFER'} {prompt!r} -> {text!r}" + (" (stopped at EOS)" if early else ""))
        if not match:
            print(f"   optimum {got}\n   pytorch {want}")
    print(f"{ok}/{len(ref['prompts'])} prompts: optimum's greedy {ref['new_tokens']} tokens equal PyTorch's")
    return 0 if ok == len(ref["prompts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
