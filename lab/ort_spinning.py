"""Two onnxruntime sessions in one process, their decode steps in turn, with the pool threads' spinning on and off:
why OrtLM turns spinning off (docs/results/onnx-genai.md). Batch 1, a 128-token prompt, 31 decode steps.

    .venv/bin/python lab/ort_spinning.py ART
"""

from __future__ import annotations

import argparse
import random
import time

import onnxruntime as ort

from prunekit.runtimes import OrtLM


def session(path: str, spin: bool) -> OrtLM:
    lm = OrtLM(path, threads=2)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    lm.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return lm


def tok_s(lms: list[OrtLM], prompt: list[list[int]], steps: int = 31) -> list[float]:
    its = [lm.steps(prompt) for lm in lms]
    for it in its:
        next(it)  # the prefill, not timed
    spent = [0.0] * len(its)
    for _ in range(steps):
        for j, it in enumerate(its):
            t = time.perf_counter()
            next(it)
            spent[j] += time.perf_counter() - t
    return [round(steps / s, 1) for s in spent]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    path = f"{ap.parse_args().artifact}/onnx/model.onnx"
    rng = random.Random(0)
    prompt = [[rng.randrange(100, 30000) for _ in range(128)]]
    for spin in (True, False):
        a, b = session(path, spin), session(path, spin)
        tok_s([a], prompt)  # warm-up
        print(f"spinning {'on ' if spin else 'off'}: alone {tok_s([a], prompt)} tok/s, paired {tok_s([a, b], prompt)}")


if __name__ == "__main__":
    main()
