"""Recovery by distillation (--recover-tokens) on tiny models and the tiny mix."""

import copy
import json

import pytest
import torch
from conftest import ARCH_CONFIGS, tiny_mix, tiny_model, tiny_src, tiny_tokenizer
from prunekit.compress import CompressConfig, compress
from prunekit.compress import data as D
from prunekit.compress.recover import (
    RecoverSettings,
    auto_lr,
    curve,
    kl_to_teacher,
    recover,
    recovery_data,
    schedule,
    warmup_steps,
)

from prunekit.errors import PrunekitError
from prunekit.families import family_for_config, get_module


def kl(student, teacher, ids) -> float:
    with torch.no_grad():
        return kl_to_teacher(student(input_ids=ids).logits, teacher(input_ids=ids).logits).item()


@pytest.mark.unit
def test_recover_moves_the_student_toward_the_teacher():
    teacher = tiny_model("llama", vocab_size=320, initializer_range=0.2)  # peaked outputs: a KL worth fitting
    student = copy.deepcopy(teacher)
    fam = family_for_config(student.config)
    with torch.no_grad():  # a crude "cut": half of every MLP's channels zeroed
        for layer in get_module(student, fam.layers):
            layer.mlp.down_proj.weight[:, ::2] = 0
    flags = [p.requires_grad for p in student.parameters()]
    embed = student.model.embed_tokens.weight.clone()
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, 320, (4, 32), generator=g)
    before = kl(student, teacher, seqs)
    # Four passes over four sequences: random tokens teach nothing that carries to other random tokens.
    rec = recover(student, teacher, fam, seqs.repeat(4, 1), RecoverSettings(lr=3e-3, batch=2, micro=1), heldout=seqs)
    assert kl(student, teacher, seqs) < 0.6 * before
    assert rec["steps"] == 8 and rec["tokens"] == 16 * 32 and len(rec["kl_curve"]) == 8
    assert rec["lr"] == 3e-3 and rec["lr_rule"] == "given"
    assert torch.equal(student.model.embed_tokens.weight, embed)  # embeddings (tied head) stay
    assert [p.requires_grad for p in student.parameters()] == flags and student.dtype == torch.float32
    assert all(p.grad is None for p in student.parameters())


def cut_pair(arch: str, **overrides):
    """A tiny teacher with peaked outputs and a student with half of every MLP's channels zeroed."""
    teacher = tiny_model(arch, vocab_size=320, initializer_range=0.2, **overrides)
    student = copy.deepcopy(teacher)
    fam = family_for_config(student.config)
    with torch.no_grad():
        for layer in get_module(student, fam.layers):
            layer.mlp.down_proj.weight[:, ::2] = 0
    return teacher, student, fam


@pytest.mark.unit
def test_a_student_gone_to_nan_is_never_kept():
    """A rate that overflows the weights (NaN logits) counts as a rise, and the run ends on a finite state."""
    teacher, student, fam = cut_pair("llama")
    g = torch.Generator().manual_seed(1)
    seqs, heldout = torch.randint(0, 320, (8, 32), generator=g), torch.randint(0, 320, (2, 32), generator=g)
    before = kl(student, teacher, heldout)
    rec = recover(student, teacher, fam, seqs, RecoverSettings(lr=1e30, batch=2, max_backoffs=1), heldout)
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert kl(student, teacher, heldout) <= before * (1 + 1e-4) and not rec["kept"]


@pytest.mark.unit
@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
def test_recovery_never_ends_worse_than_it_started(arch):
    """At a learning rate far too high for the model (as the default one was for a 0.5B Qwen2 with untied
    embeddings: KL 0.39 -> 2.45 after one step), the guard sees the held-out KL rise, restores the best state
    and lowers the rate; whatever happens, the student ends no worse on the held-out sequences than it began,
    and a run that never beat its start keeps the pre-recovery weights and says so."""
    teacher, student, fam = cut_pair(arch, tie_word_embeddings=False)
    g = torch.Generator().manual_seed(0)
    seqs, heldout = torch.randint(0, 320, (24, 32), generator=g), torch.randint(0, 320, (4, 32), generator=g)
    before, start = kl(student, teacher, heldout), copy.deepcopy(student.state_dict())
    said = []
    rec = recover(student, teacher, fam, seqs, RecoverSettings(lr=1.0, batch=2, checks=12), heldout, log=said.append)
    after = kl(student, teacher, heldout)
    assert after <= before * (1 + 1e-4), (before, after)
    assert rec["heldout"]["backoffs"] and rec["heldout"]["backoffs"][0]["lr"] == 0.25
    assert rec["heldout"]["kl_after"] <= rec["heldout"]["kl_before"]
    if not rec["kept"]:
        assert all(torch.equal(v, student.state_dict()[k]) for k, v in start.items())
        assert any("pre-recovery weights are kept" in m for m in said)
    # The same cut at a rate that suits it: recovery is kept and lowers the held-out KL.
    teacher, student, fam = cut_pair(arch, tie_word_embeddings=False)
    rec = recover(student, teacher, fam, seqs, RecoverSettings(lr=3e-3, batch=2), heldout, log=said.append)
    assert rec["kept"] and kl(student, teacher, heldout) < before


@pytest.mark.integration
def test_compiled_recovery_trains_as_eager_does_and_leaves_the_model_eager():
    """torch.compile on every decoder layer and the loss (long runs): the same training as eager, to fp32
    rounding, and the layers run eager again afterwards (compress evaluates and saves them next)."""
    teacher, student, fam = cut_pair("llama")
    eager = copy.deepcopy(student)
    g = torch.Generator().manual_seed(0)
    seqs, heldout = torch.randint(0, 320, (24, 32), generator=g), torch.randint(0, 320, (4, 32), generator=g)
    a = recover(student, teacher, fam, seqs, RecoverSettings(lr=3e-3, batch=2, compile=True), heldout)
    b = recover(eager, teacher, fam, seqs, RecoverSettings(lr=3e-3, batch=2, compile=False), heldout)
    assert a["compiled"] and not b["compiled"]
    assert a["heldout"]["kl_after"] == pytest.approx(b["heldout"]["kl_after"], rel=1e-3)
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in (*student.modules(), *teacher.modules()))


@pytest.mark.unit
def test_recover_keeps_a_bf16_model_bf16_and_its_rope_tables_fp32():
    teacher = tiny_model("llama", vocab_size=320).to(torch.bfloat16)
    student = copy.deepcopy(teacher)
    teacher.model.rotary_emb.inv_freq.data = teacher.model.rotary_emb.inv_freq.float()  # as a loaded bf16 model has it
    student.model.rotary_emb.inv_freq.data = teacher.model.rotary_emb.inv_freq.clone()
    rope = {n: (b.dtype, b.clone()) for n, b in student.named_buffers() if b.is_floating_point()}
    rec = recover(
        student, teacher, family_for_config(student.config), torch.randint(0, 320, (2, 16)), RecoverSettings(batch=2)
    )
    assert rec["precision"].startswith("bf16") and all(p.dtype == torch.bfloat16 for p in student.parameters())
    for n, b in student.named_buffers():
        if n in rope:
            assert b.dtype == rope[n][0] and torch.equal(b, rope[n][1]), n


@pytest.mark.unit
def test_default_learning_rate_follows_the_run_length():
    """Short runs get the rate measured best at 16 and 32 steps, the default 96-step run the one best there, and
    lengths between a rate between, rising with the length."""
    assert auto_lr(1) == auto_lr(16) == auto_lr(32) == 1.5e-4 and auto_lr(96) == auto_lr(1000) == 4e-4
    mid = [auto_lr(n) for n in range(32, 97)]
    assert all(a < b for a, b in zip(mid, mid[1:])) and 2.5e-4 < auto_lr(64) < 3e-4
    assert CompressConfig().recover_lr is None  # the CLI default is the rule, recorded as such


@pytest.mark.unit
def test_schedule_and_curve():
    lrs = [schedule(i, 10, 1) for i in range(10)]
    assert lrs[0] == 1.0 and lrs[-1] < 0.05 and all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert schedule(0, 10, 3) < schedule(2, 10, 3) == 1.0  # linear warm-up
    # Warm-up in steps that exist: a 10% warm-up of 8 steps would be under one step.
    assert warmup_steps(8, RecoverSettings()) == 4 and warmup_steps(100, RecoverSettings()) == 10
    assert curve([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]
    c = curve([float(i) for i in range(1000)], points=10)
    assert len(c) == 10 and c[0] == pytest.approx(49.5) and c[-1] == pytest.approx(949.5)


@pytest.mark.unit
def test_recovery_set_comes_from_the_calibration_pool(tmp_path, monkeypatch):
    mix = D.load_mix(tiny_mix(tmp_path / "mix"))
    tok = tiny_tokenizer()
    seqs, counts = D.recovery_set(mix, tok, 5)
    assert seqs.shape == (5, mix.seq_len) and counts == {"prose": 3, "code": 2}
    assert torch.equal(seqs, D.recovery_set(mix, tok, 5)[0])  # deterministic
    # More than the pools hold: the text is read again instead of failing.
    pool = sum(len(tok(t)["input_ids"]) for d in mix.domains for t in D.domain_texts(mix, d).calib)
    assert len(D.recovery_set(mix, tok, pool // mix.seq_len + 20)[0]) == pool // mix.seq_len + 20
    # No held-out text: what is packed is the calibration pool, and it shares no text with the held-out pool.
    packed: list[str] = []
    real_pack = D.pack
    monkeypatch.setattr(D, "pack", lambda texts, *a, **k: packed.extend(texts) or real_pack(texts, *a, **k))
    D.recovery_set(mix, tok, 5)
    heldout = {t for dom in mix.domains for t in D.domain_texts(mix, dom).heldout}
    assert packed and heldout and not heldout & set(packed)
    with pytest.raises(PrunekitError, match="calibration samples"):
        D.recovery_set(mix, tok, 5, domains=("nope",))


@pytest.mark.unit
def test_recovery_pieces_split_whole_sequences(tmp_path):
    mix = D.load_mix(tiny_mix(tmp_path / "mix"))
    tok = tiny_tokenizer()
    whole, heldout, _ = recovery_data(mix, tok, CompressConfig(out="x", recover_tokens=100))
    half = mix.seq_len // 2
    pieces, heldout2, _ = recovery_data(mix, tok, CompressConfig(out="x", recover_tokens=100, recover_seq_len=half))
    # The same tokens, cut in two; the held-out KL stays on whole sequences.
    assert pieces.shape == (2 * len(whole), half) and torch.equal(pieces.reshape(whole.shape), whole)
    assert torch.equal(heldout2, heldout) and heldout.shape[1] == mix.seq_len
    with pytest.raises(PrunekitError, match="does not divide"):
        recovery_data(mix, tok, CompressConfig(out="x", recover_tokens=100, recover_seq_len=mix.seq_len - 1))


@pytest.mark.unit
def test_compress_records_the_recovery(tmp_path):
    from transformers import AutoModelForCausalLM

    # Peaked outputs and a deep cut: a KL that 2 steps can lower (a random model's 20% cut is near lossless).
    src = tiny_src(tmp_path / "model", intermediate_size=256, num_hidden_layers=4, initializer_range=0.2)
    mix = tiny_mix(tmp_path / "mix")
    c = CompressConfig(
        model=str(src),
        calib=str(mix),
        out=str(tmp_path / "out"),
        ratio=0.4,
        ratio_of="decoder",
        align=32,
        rounds=1,
        quick_eval=0,
        seed=0,
        dtype="float32",
        recover_tokens=100,
        recover_batch=2,
        recover_lr=1e-3,
    )
    m = compress(c, log=lambda _: None)
    r = m.recovery
    assert r["sequences"] == 4 and r["tokens"] == 4 * 32 and r["steps"] == 2  # 100 tokens -> 4 whole sequences
    # 4 more drawn from the same pools to watch the held-out KL on, never trained on.
    assert r["data"]["sequences"] == {"prose": 4, "code": 4} and r["data"]["heldout_sequences"] == 4
    assert r["heldout"]["sequences"] == 4 and r["precision"] == "fp32"
    after = m.quality["heldout_ppl"]["pruned"]
    assert r["kept"] and r["heldout"]["kl_after"] < r["heldout"]["kl_before"]
    assert set(r["heldout_ppl_before"]) == set(after) and r["heldout_ppl_before"] != after  # it trained
    on_disk = json.loads((tmp_path / "out" / "prunekit.json").read_text())
    assert on_disk["recovery"]["steps"] == 2 and on_disk["settings"]["recover_tokens"] == 100
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert sum(p.numel() for p in model.parameters()) == m.params["pruned_total"]


@pytest.mark.unit
@pytest.mark.parametrize(
    "kw, match",
    [
        ({"recover_tokens": -1}, "--recover-tokens"),
        ({"recover_lr": 0.0}, "--recover-lr"),
        ({"recover_batch": 0}, "--recover-batch"),
        ({"recover_seq_len": 0}, "--recover-seq-len"),
    ],
)
def test_recover_options_are_checked(kw, match):
    with pytest.raises(PrunekitError, match=match):
        CompressConfig(out="x", **kw)
