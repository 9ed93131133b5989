"""What needs the shared data sets (../shared/data or $PRUNEKIT_DATA): the packaged default mix, the
zero-shot loaders, the WikiText-2 protocol, and a whole quick bench run on tiny artifacts."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_checkpoint, tiny_tokenizer
from prunekit.compress import data as D

pytestmark = pytest.mark.integration


def test_default_mix_resolves_locally_and_is_disjoint(data_root):
    """The packaged mix reads ../shared/data; its six domains hold out text they never calibrate on."""
    mix = D.load_mix("default")
    assert {d.name for d in mix.domains} == {"web", "code", "math", "instructions", "german", "chinese"}
    for dom in mix.domains:
        t = D.domain_texts(mix, dom)
        assert not t.fingerprint.startswith("hub:"), dom.name
        assert len(t.calib) > 50 and len(t.heldout) > 10, dom.name
        assert not {D.text_key(x) for x in t.calib} & {D.text_key(x) for x in t.heldout}


def test_task_loaders_read_the_shared_data(data_root):
    from prunekit.bench.zeroshot import TASKS

    sizes = {name: len(load(data_root)) for name, load in TASKS.items()}
    assert sizes == {
        "piqa": 1838,
        "hellaswag": 10042,
        "arc_easy": 2376,
        "arc_challenge": 1172,
        "boolq": 3270,
        "winogrande": 1267,
        "openbookqa": 500,
    }
    for name, load in TASKS.items():
        d = load(data_root)[0]
        assert 0 <= d.gold < len(d.continuations) == len(d.contexts), name


def test_wikitext_windows_follow_the_paper_protocol(data_root):
    from prunekit.bench.quality import wikitext_windows

    tok = tiny_tokenizer()
    w = wikitext_windows(data_root, tok, 256, limit=3)
    assert w.shape == (3, 256)
    text = tok.decode(w[0].tolist())
    # HF rows ("" for the blank " " lines, "\n" kept on the others) joined by "\n\n", as the papers do.
    assert text.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is")


def test_quick_bench_on_tiny_artifacts(tmp_path, data_root, monkeypatch):
    from prunekit.bench import PRESETS, BenchConfig, run_bench
    from prunekit.export import ExportConfig, export

    arts = {}
    for label, kw in (("dense", {}), ("20%", dict(widths=[128] * 3))):
        src = tiny_checkpoint(tmp_path / f"src-{len(arts)}", "llama", **kw)
        export(ExportConfig(model=str(src), out=str(tmp_path / f"art-{len(arts)}"), tokens=2), log=lambda m: None)
        arts[label] = str(tmp_path / f"art-{len(arts)}")
    # The method grid prunes the tiny dense source in-process (ours and wanda-sp, at 30%: the tiny
    # model's MLP granularity cannot hit 20%).
    monkeypatch.setattr(PRESETS["quick"], "method_ratios", (0.3,))
    cfg = BenchConfig(
        preset="quick",
        out=str(tmp_path / "results"),
        workdir=str(tmp_path / "work"),
        artifact=tuple(f"{k}={v}" for k, v in arts.items()),
        threads=2,
        runtimes=("torch", "onnxruntime"),
        model=str(tmp_path / "src-0"),
    )
    out = run_bench(cfg, log=lambda m: None)
    res = json.loads((out / "results.json").read_text())
    assert set(res["models"]) == {"dense", "20%"}
    d, p = res["models"]["dense"], res["models"]["20%"]
    assert p["weight_bytes_per_token"] < d["weight_bytes_per_token"]
    for m in (d, p):
        assert m["quality"]["wikitext2"]["ppl"] > 1 and set(m["quality"]["zeroshot"]) >= {"piqa", "winogrande"}
        for rt in ("torch", "onnxruntime"):
            s = m["speed"][rt]
            assert s["runs"] == 1 and not s["errors"] and s["decode_tok_s_b1"]["median"] > 0, s
    rows = res["methods"]
    assert [(r["variant"], r["ratio"]) for r in rows] == [("dense", 0.0), ("ours", 0.3), ("wanda-sp", 0.3)]
    assert all(r["params"] < rows[0]["params"] and r["quality"]["mean_acc"] is not None for r in rows[1:])
    report = (out / "report.md").read_text()
    assert "| 20% |" in report and "ideal" in report and "| wanda-sp |" in report
    for png in ("quality.png", "speed.png", "methods.png"):
        assert (out / png).stat().st_size > 1000


def test_bench_heldout_has_french_out_of_the_mix_and_chinese_once(data_root):
    """French is the bench's out-of-mix probe; Chinese, now calibrated on, is held out by the mix."""
    from prunekit.bench.quality import heldout_domains

    assert "french" not in {d.name for d in D.load_mix("default").domains}
    doms = heldout_domains(data_root, tiny_tokenizer(), 64, 2)
    assert set(doms) == {"web", "code", "math", "instructions", "german", "chinese", "french"}
    assert all(t.shape == (2, 64) for t in doms.values())


def test_wikitext_at_two_window_lengths_leaves_the_task_limit_alone(data_root):
    """WikiText-2 in windows of seq_len and of the papers' longer window over the same token budget, and the
    zero-shot limit still applies (a loop variable once shadowed it)."""
    from conftest import tiny_model, tiny_tokenizer
    from prunekit.bench.quality import evaluate_model

    model, tok = tiny_model("llama", vocab_size=320).eval(), tiny_tokenizer()
    q = evaluate_model(
        model,
        tok,
        data_root,
        seq_len=64,
        wikitext_limit=8,
        domain_samples=1,
        tasks=("piqa",),
        limit=5,
        log=lambda m: None,
        wikitext_long=128,
    )
    assert q["zeroshot"]["piqa"]["n"] == 5 and len(q["zeroshot"]["piqa"]["correct"]) == 5
    assert (q["wikitext2"]["seq_len"], q["wikitext2"]["tokens"]) == (64, 8 * 63)
    assert (q["wikitext2_long"]["seq_len"], q["wikitext2_long"]["tokens"]) == (128, 4 * 127)
