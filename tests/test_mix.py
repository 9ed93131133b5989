"""The calibration mix: determinism, disjoint splits, and clear errors for bad specs."""

import json

import pytest
import torch
import yaml
from prunekit.compress import data as D

from prunekit.errors import PrunekitError

pytestmark = pytest.mark.unit


class WordTok:
    """A whitespace tokenizer: mix mechanics do not need a real vocabulary."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [hash(w) % 1000 for w in text.split()]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mix_file(tmp_path, domains, **top):
    spec = {"name": "t", "seq_len": 16, "seed": 0, "domains": domains, **top}
    p = tmp_path / "mix.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


@pytest.fixture
def qa_file(tmp_path):
    rows = [{"question": f"q{i} " + "word " * 10, "answer": f"a{i} " + "ans " * 5} for i in range(200)]
    return write_jsonl(tmp_path / "qa.jsonl", rows)


def test_template_seed_and_packing(tmp_path, qa_file):
    p = mix_file(
        tmp_path,
        {"qa": {"source": str(qa_file), "template": "Q: {question} A: {answer}", "samples": 4, "eval_samples": 2}},
    )
    a = D.build(D.load_mix(p), WordTok())
    b = D.build(D.load_mix(p), WordTok())
    c = D.build(D.load_mix(p, seed=1), WordTok())
    assert a.calib["qa"].shape == (4, 16) and a.heldout["qa"].shape == (2, 16)
    assert torch.equal(a.calib["qa"], b.calib["qa"]) and a.fingerprint == b.fingerprint
    assert not torch.equal(a.calib["qa"], c.calib["qa"])
    # The held-out split does not depend on the seed: every run evaluates on the same text.
    assert torch.equal(a.heldout["qa"], c.heldout["qa"])
    # The fingerprint follows the source's content, not only the spec: same file name, one record changed.
    qa_file.write_text(qa_file.read_text().replace("q7 ", "q7 changed ", 1))
    assert D.build(D.load_mix(p), WordTok()).fingerprint != a.fingerprint


def test_split_is_disjoint_even_with_duplicates(tmp_path):
    rows = [{"text": f"doc {i % 50} " + "x " * 5} for i in range(300)]  # every text 6 times
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    p = mix_file(tmp_path, {"web": {"source": str(f), "template": "{text}", "samples": 1}})
    mix = D.load_mix(p)
    t = D.domain_texts(mix, mix.domains[0])
    assert t.calib and t.heldout
    assert not {D.text_key(x) for x in t.calib} & {D.text_key(x) for x in t.heldout}


def test_eval_source_drops_calibration_overlap(tmp_path):
    f = write_jsonl(tmp_path / "c.jsonl", [{"text": f"a{i} b c d"} for i in range(50)])
    e = write_jsonl(tmp_path / "e.jsonl", [{"text": f"a{i} b c d"} for i in range(40, 90)])
    p = mix_file(tmp_path, {"w": {"source": str(f), "eval_source": str(e), "template": "{text}", "samples": 1}})
    mix = D.load_mix(p)
    t = D.domain_texts(mix, mix.domains[0])
    assert len(t.heldout) == 40  # a40..a49 are calibration text and were dropped


def test_check_disjoint_detects_overlap():
    with pytest.raises(PrunekitError, match="both"):
        D.check_disjoint(["x", "y"], ["y"], "web")


def test_weights_split_total(tmp_path, qa_file):
    d = {
        "a": {"source": str(qa_file), "template": "{question}", "weight": 3},
        "b": {"source": str(qa_file), "template": "{answer}", "weight": 1},
    }
    mix = D.load_mix(mix_file(tmp_path, d, total_samples=8))
    assert [x.samples for x in mix.domains] == [6, 2]


@pytest.mark.parametrize(
    "domain,match",
    [
        ({"source": "qa.jsonl", "template": "{question}", "samples": 1, "tempalte": "x"}, "unknown key"),
        ({"source": "missing.jsonl", "template": "{question}", "samples": 1}, "not found"),
        ({"source": "empty.jsonl", "template": "{question}", "samples": 1}, "no records"),
        ({"source": "qa.jsonl", "template": "{question} {solution}", "samples": 1}, "solution"),
        ({"source": "qa.jsonl", "template": "{question}", "samples": 500}, "tokens but"),
        ({"source": "qa.jsonl", "samples": 1}, "missing `template`"),
        ({"source": "qa.xml", "template": "{question}", "samples": 1}, "unsupported type"),
        ({"source": "broken.jsonl", "template": "{question}", "samples": 1}, "line 2 is not JSON"),
        ({"source": "list.jsonl", "template": "{question}", "samples": 1}, "line 1 is a JSON list"),
        ({"source": "array.jsonl", "template": "{question}", "samples": 1}, "one JSON array"),
        ({"source": "latin1.jsonl", "template": "{question}", "samples": 1}, "not UTF-8"),
    ],
)
def test_bad_specs_name_the_domain(tmp_path, qa_file, domain, match):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "qa.xml").write_text("<x/>")
    (tmp_path / "broken.jsonl").write_text('{"question": "a"}\n{"question": \n')
    (tmp_path / "list.jsonl").write_text('["a", "b"]\n')
    (tmp_path / "array.jsonl").write_text('[\n  {"question": "a"}\n]\n')
    (tmp_path / "latin1.jsonl").write_bytes('{"question": "caf\u00e9"}\n'.encode("latin-1"))
    p = mix_file(tmp_path, {"mathy": domain})
    with pytest.raises(PrunekitError, match=match) as e:
        D.build(D.load_mix(p), WordTok())
    assert "mathy" in str(e.value)


def test_bad_top_level(tmp_path):
    with pytest.raises(PrunekitError, match="domains"):
        D.parse_mix({"name": "x"})
    with pytest.raises(PrunekitError, match="unknown top-level"):
        D.parse_mix({"domains": {"a": {"source": "x", "template": "{t}", "samples": 1}}, "sed": 1})
    with pytest.raises(PrunekitError, match="does not exist"):
        D.load_mix(tmp_path / "nope.yaml")


def test_jsonl_records_are_what_datasets_reads(tmp_path):
    """JSON lines are read without `datasets` (and pyarrow): the same records, blank lines skipped, so the
    same calibration text."""
    datasets = pytest.importorskip("datasets")
    rows = [{"text": "caf\u00e9 \u4e2d\u6587", "n": 1}, {"text": "two\nlines", "n": 2}, {"text": "x", "n": 3}]
    f = tmp_path / "d.jsonl"
    f.write_text(
        "\ufeff" + json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\r\n" + json.dumps(rows[2]), encoding="utf-8"
    )  # a byte-order mark, a blank line, CRLF, no final newline
    ours = D._jsonl(f, D.Domain("web", D.Source(path=str(f)), "{text}", samples=1, eval_samples=0))
    assert ours == rows == list(datasets.load_dataset("json", data_files=str(f), split="train"))
