"""bench --shapes: cuts of random-weight models in real shapes, built as real artifacts and timed by the worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunekit.errors import PrunekitError

LAB = Path(__file__).resolve().parent.parent / "lab"


def _lab(name: str):
    """A study script of lab/ (not part of the package) as a module: lab/NAME.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"lab_{name}", LAB / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.unit
def test_shapes_cut_widths():
    """Uniform cuts remove the asked share on the alignment grid; a per-layer cut spreads the same total."""
    from prunekit.bench.shapes import SHAPES, default_align, params, parse_cut, widths_for

    cfg = SHAPES["llama-3.1-8b"][1]
    dense = params(cfg, [cfg["intermediate_size"]] * 32)
    assert dense == 8_030_261_248  # Llama-3.1-8B's published count
    for label, align in (("20% a256", 256), ("20% a64", 64), ("40%", default_align())):
        cut = parse_cut(label)
        w = widths_for(cfg, cut)
        assert cut.align == align and len(set(w)) == 1 and w[0] % align == 0
        assert abs(1 - params(cfg, w) / dense - cut.ratio) < 0.01
    w = widths_for(cfg, parse_cut("30% per-layer"))
    assert len(set(w)) > 4 and w == sorted(w) and max(w) <= cfg["intermediate_size"]
    assert abs(1 - params(cfg, w) / dense - 0.3) < 0.01
    with pytest.raises(PrunekitError, match="not understood"):
        parse_cut("30% generic")
    assert (parse_cut("20% int8").quant, parse_cut("20% int8").ratio, parse_cut("dense int4").quant) == (
        "int8",
        0.2,
        "int4",
    )
    assert parse_cut("30% per-layer int4").per_layer and parse_cut("40%").quant is None


@pytest.mark.integration
def test_shapes_quantized_cut_and_genai_folder(tmp_path):
    """A quantized cut of a shape is a quantized artifact whose weights read fewer bytes a token; a uniform cut can
    carry onnxruntime-genai's folder, which genai_compare times beside our graph."""
    from conftest import tiny_tokenizer
    from prunekit.bench.genai_compare import compare
    from prunekit.bench.models import weight_bytes_per_token
    from prunekit.bench.shapes import build, parse_cut

    from prunekit.artifact import read_manifest

    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    arts = {
        c: build("tiny", parse_cut(c), tmp_path, True, lambda m: None, str(tmp_path / "tok"))
        for c in ("20%", "20% int8")
    }
    assert read_manifest(arts["20% int8"]).quantization["scheme"] == "int8"
    assert weight_bytes_per_token(arts["20% int8"]) < 0.6 * weight_bytes_per_token(arts["20%"])
    art = build("tiny", parse_cut("20%"), tmp_path, True, lambda m: None, str(tmp_path / "tok"), genai=True)
    assert read_manifest(art).genai and art.name.endswith("-genai")
    (row,) = compare({"tiny": art}, threads=2, repeats=2, batch=2, prompt_len=8, new_tokens=4, log=lambda m: None)
    for rt in ("onnxruntime", "onnxruntime-genai"):
        assert row["summary"][rt]["runs"] == 2 and row["summary"][rt]["decode_tok_s_b1"]["median"] > 0, row


@pytest.mark.unit
def test_paired_timing_interleaves_steps_and_skips_the_prefill():
    """A pair's two models step in turn, A B B A ..., each timed on its own steps only: a slow prefill and the
    other model's steps do not count, and a model twice as slow a step reads half the tok/s."""
    import time

    from prunekit.bench.speed_worker import Loaded, interleaved

    calls = []

    def stepper(name, prefill_s, step_s):
        def steps(prompts):
            calls.append((name, "prefill"))
            time.sleep(prefill_s)
            yield
            while True:
                calls.append(name)
                time.sleep(step_s)
                yield

        return Loaded(None, steps, 10, 0.0)

    a, b = stepper("a", 0.2, 0.02), stepper("b", 0.0, 0.01)
    tok_a, tok_b = interleaved([a, b], [[1, 2], [3, 4]], 6)
    assert calls == [("a", "prefill"), ("b", "prefill")] + ["a", "b", "b", "a"] * 3
    assert 1.6 < tok_b / tok_a < 2.4, (tok_a, tok_b)  # 2 prompts x 6 steps over 0.12 s and 0.06 s
    assert 60 < tok_a <= 100, tok_a  # the 0.2 s prefill is not in it


@pytest.mark.integration
def test_shapes_mode_builds_cuts_and_times_them(tmp_path):
    """Artifacts of a real export (the per-layer cut in the DeciLM layout), timed by the bench worker."""
    from conftest import tiny_tokenizer
    from prunekit.bench.shapes import run_shapes

    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    res = run_shapes(
        ["tiny"],
        ["dense", "40%", "30% per-layer"],
        ("torch",),
        tmp_path / "out",
        tmp_path / "work",
        repeats=1,
        threads=2,
        prompt_len=8,
        new_tokens=6,
        batch=2,
        tokenizer=str(tmp_path / "tok"),
        profile_cut="40%",
        log=lambda m: None,
        paired=2,
    )
    dense, cut, per_layer = res["rows"]
    assert "paired" not in dense  # each cut against dense, in one process, step by step in turn
    for r in (cut, per_layer):
        pr = r["paired"]["torch"]
        assert len(pr["b1"]["pairs"]) == 2 and all(x > 0 for x in pr["b1"]["pairs"] + pr["batch"]["pairs"]), pr
        assert pr["batch"]["min"] <= pr["batch"]["median"] <= pr["batch"]["max"]
    assert "| tiny | 40% | torch |" in (tmp_path / "out" / "shapes.md").read_text()
    series = _lab("phases").series  # the steadiness check (lab/): one process, rounds of batch decode
    ser = series(cut["artifact"], ["torch"], 0.01, 2, 2, 8, 4, log=lambda m: None)
    assert len(ser["tok_s"]["torch"]) == len(ser["seconds"]) >= 1 and ser["tok_s"]["torch"][0] > 0
    assert (dense["layout"], cut["layout"], per_layer["layout"]) == ("uniform", "uniform", "decilm")
    assert cut["weight_bytes_per_token"] < dense["weight_bytes_per_token"]
    assert all(r["speed"]["torch"]["decode_tok_s_b1"]["median"] > 0 for r in res["rows"])
    assert "| tiny | 30% per-layer | decilm |" in (tmp_path / "out" / "shapes.md").read_text()
    assert (tmp_path / "out" / "shapes-speedup.png").stat().st_size > 0
    from prunekit.bench.op_profile import CATEGORIES

    for label in ("dense", "40%"):  # the profiler's parts add up to its wall time per token
        row = res["profile"]["rows"]["torch"][label]
        # Per-token parts are differences of a long and a short profiled run: at this tiny shape the decoder's
        # own matmuls (~0.05 ms a token) are within that noise (seen: -0.013 ms of 3.0), the matmuls as a whole
        # are not.
        assert row["wall_ms"] > 0 and row["decoder matmuls"] + row["LM head"] > 0, row
        assert abs(sum(row[c] for c in CATEGORIES) - row["wall_ms"]) < 1e-6 * row["wall_ms"] + 1e-9, row
        # Three (1-token, N-token) pairs; the reported one is the median of their wall times.
        assert len(row["pairs_wall_ms"]) == 3 and sorted(row["pairs_wall_ms"])[1] == round(row["wall_ms"], 2), row


@pytest.mark.integration
def test_vllm_pairs_two_engines_in_one_process(tmp_path):
    """vLLM too times a cut against dense step by step: both engines' cores in the worker's own process
    (a core in a process of its own would run ahead of the steps it is asked for), each pair's speeds positive."""
    from conftest import tiny_tokenizer
    from prunekit.bench.shapes import build, pair_speedups, parse_cut
    from prunekit.bench.timing import speed_once

    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    arts = [
        build("tiny", parse_cut(c), tmp_path, False, lambda m: None, str(tmp_path / "tok")) for c in ("dense", "40%")
    ]
    res = speed_once("vllm", arts[1], 2, "float32", prompt_len=8, new_tokens=6, batch=2, pair_with=arts[0], pairs=2)
    pr = pair_speedups(res)
    assert "error" not in pr, pr
    assert len(pr["batch"]["pairs"]) == 2 and all(x > 0 for x in pr["b1"]["pairs"] + pr["batch"]["pairs"]), pr


@pytest.mark.unit
def test_gpu_decode_rehearses_on_the_cpu(tmp_path):
    """The prepared GPU decode bench (bench/gpu_decode.py) runs end to end on the CPU, so a lent GPU's few
    minutes are not spent on its bugs: each path's rate, its bandwidth limit and the table."""
    import json

    from prunekit.bench.gpu_decode import bytes_per_step, markdown, run

    res = run(
        ["tiny"],
        [0.0, 0.2],
        prompt_len=8,
        n=4,
        batch=2,
        repeats=1,
        compiled_batches=[],
        out=tmp_path,
        dev="cpu",
        log=lambda m: None,
    )
    dense, cut = res["rows"]
    assert cut["width"] < dense["width"] and cut["params"] < dense["params"]
    for r in res["rows"]:
        for path in ("eager b1", "eager b2"):
            p = r["paths"][path]
            assert p["tok_s"] > 0 and 0 < p["of_limit"] and p["limit_tok_s"] > 0
    assert cut["paths"]["eager b1"]["limit_tok_s"] > dense["paths"]["eager b1"]["limit_tok_s"]
    assert json.loads((tmp_path / "gpu-decode.json").read_text())["rows"][1]["ratio"] == 0.2
    assert "| tiny | 20% |" in markdown(res)

    from prunekit.bench.gpu_decode import build

    model, width, _ = build("tiny", 0.0, "cpu")
    c = model.config  # untied: the LM head is read, the input embedding only gathered
    w = sum(p.numel() * 2 for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n)
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 2
    assert bytes_per_step(model, 3, 10) == w + 3 * kv * 10
