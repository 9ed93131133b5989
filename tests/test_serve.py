"""serve: a tiny artifact behind vLLM's OpenAI server, the load client, and the refusals."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.error
import urllib.request

import pytest
from conftest import tiny_checkpoint
from prunekit.serve import ServeConfig

from prunekit.errors import PrunekitError

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, key: str | None = None) -> dict:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def as_old_prunekit1(art) -> None:
    """Rewrite an artifact's manifest as the untyped writers before the typed schema left it (key order,
    an explicit "verify": null, no inputs_hash, the bench's resume tag), so that the tests below show
    that such an artifact still verifies and serves."""
    m = json.loads((art / "prunekit.json").read_text())
    m.pop("inputs_hash", None)
    order = (
        "format",
        "stage",
        "name",
        "family",
        "architectures",
        "layout",
        "reason",
        "shipped_code",
        "dtype",
        "onnx",
        "source",
        "reference",
        "files",
        "verify",
        "versions",
        "export_s",
    )
    old = {k: m.get(k) for k in order}
    old["bench"] = {"model": "default", "ratio": 0.2, "mode": "uniform"}
    (art / "prunekit.json").write_text(json.dumps(old, indent=2, sort_keys=False, default=str) + "\n")


@pytest.fixture(scope="module")
def verified(tmp_path_factory):
    """A uniform tiny Llama artifact with a manifest as prunekit/1 wrote it before the typed schema, that
    then passed today's verify (transformers, for speed)."""
    from prunekit.export import ExportConfig, VerifyConfig, export, verify

    d = tmp_path_factory.mktemp("serve")
    src = tiny_checkpoint(d / "src", "llama", widths=[192] * 3)
    export(ExportConfig(model=str(src), out=str(d / "art"), tokens=8, onnx=False), log=lambda m: None)
    as_old_prunekit1(d / "art")
    assert verify(VerifyConfig(artifact=str(d / "art"), runtimes=("transformers",)), log=lambda m: None)["passed"]
    after = json.loads((d / "art" / "prunekit.json").read_text())
    assert after["verify"]["passed"] and after["bench"]["ratio"] == 0.2  # the old tag survived the rewrite
    return d / "art"


def test_server_answers_as_verify_and_stops_cleanly(verified, tmp_path):
    import torch
    from prunekit.serve import LoadConfig, Server, models, run_load
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prunekit.proc import group_alive
    from prunekit.runtimes import torch_greedy

    ref = json.loads((verified / "prunekit.json").read_text())["reference"]
    messages = [{"role": "user", "content": "Say hi."}]
    tok = AutoTokenizer.from_pretrained(verified)
    chat_ids = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    model = AutoModelForCausalLM.from_pretrained(verified, dtype=torch.float32)
    chat_ref = torch_greedy(model, [chat_ids], 8)[0][0]

    # The reference is fp32: pin the server to fp32 too (auto picks bf16 on AMX machines, where the random
    # tiny model's near-tied logits flip).
    opt = ServeConfig(
        artifact=str(verified),
        port=free_port(),
        api_key="s3cret",
        kv_cache_gib=0.05,
        max_model_len=128,
        dtype="float32",
    )
    with Server(opt, log_path=tmp_path / "vllm.log") as srv:
        pgid = srv.proc.pid
        assert srv.url.startswith("http://127.0.0.1:")
        assert models(srv.url, "s3cret") == ["art"]
        with pytest.raises(urllib.error.HTTPError) as e:
            post(srv.url + "/v1/completions", {"model": "art", "prompt": "hi", "max_tokens": 2})
        assert e.value.code == 401
        for ids, expected in zip(ref["prompt_ids"], ref["tokens"]):
            out = post(
                srv.url + "/v1/completions",
                {
                    "model": "art",
                    "prompt": ids,
                    "max_tokens": 8,
                    "temperature": 0,
                    "ignore_eos": True,
                    "return_token_ids": True,
                },
                "s3cret",
            )
            assert out["choices"][0]["token_ids"] == expected
        out = post(
            srv.url + "/v1/chat/completions",
            {
                "model": "art",
                "messages": messages,
                "max_tokens": 8,
                "temperature": 0,
                "ignore_eos": True,
                "return_token_ids": True,
            },
            "s3cret",
        )
        assert out["choices"][0]["token_ids"] == chat_ref
        load = run_load(LoadConfig(url=srv.url, model="art", concurrency=2, requests=6, max_tokens=8, api_key="s3cret"))
        assert load["errors"] == 0 and load["requests"] == 6 and load["output_tokens"] == 6 * 8, load
        assert load["ttft_p50_s"] <= load["latency_p50_s"]
    assert srv.proc.returncode is not None and group_alive(pgid) == []  # nothing of the server is left running


def test_serve_refuses_unverified_failed_and_tampered(verified, tmp_path):
    from prunekit.serve import check_artifact

    art = tmp_path / "art"
    shutil.copytree(verified, art)
    m = json.loads((art / "prunekit.json").read_text())
    check_artifact(art, allow_unverified=False)  # the verified one is accepted
    for verify_state, match in (
        (None, "has not been verified"),
        ({"passed": False, "runtimes": {"vllm": False}}, "failed verify \\(vllm\\)"),
    ):
        (art / "prunekit.json").write_text(json.dumps({**m, "verify": verify_state}))
        with pytest.raises(PrunekitError, match=match):
            check_artifact(art, allow_unverified=False)
    with pytest.raises(PrunekitError, match="not a prunekit artifact"):
        check_artifact(tmp_path, allow_unverified=True)
    with pytest.raises(PrunekitError, match="does not exist"):
        check_artifact(tmp_path / "nope", allow_unverified=True)


def test_serve_refuses_tampered_shipped_code(tmp_path):
    from prunekit.export import ExportConfig, export
    from prunekit.serve import check_artifact

    src = tiny_checkpoint(tmp_path / "src", "qwen2", widths=[64, 256, 128])
    m = export(ExportConfig(model=str(src), out=str(tmp_path / "art"), tokens=2, onnx=False), log=lambda m: None)
    check_artifact(tmp_path / "art", allow_unverified=True)
    assert list(m.shipped_code) == ["modeling_decilm.py"]  # MLP widths differ: the DeciLM layout
    code = tmp_path / "art" / "modeling_decilm.py"
    code.write_text(code.read_text().replace("pass", "import os"))
    with pytest.raises(PrunekitError, match="sha256"):
        check_artifact(tmp_path / "art", allow_unverified=True)


def test_port_in_use_is_a_clear_error():
    from prunekit.serve.server import port_free

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(PrunekitError, match="--port"):
            port_free("127.0.0.1", s.getsockname()[1])


def test_server_command_is_local_and_safe(verified):
    from prunekit.serve import check_artifact, command

    art, m = check_artifact(verified, allow_unverified=False)
    cmd, env = command(art, m, ServeConfig(artifact=str(art), api_key="k", dtype="bfloat16"))
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16"  # the asked dtype, not the machine's choice
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert "--trust-remote-code" not in cmd and "k" not in cmd and env["VLLM_API_KEY"] == "k"
    assert cmd[cmd.index("--served-model-name") + 1] == "art"
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]


def test_tensor_parallel_size_checked_before_start_and_passed_to_vllm(verified, tmp_path):
    from prunekit.serve import Server, check_artifact, command
    from prunekit.serve.server import check_tensor_parallel

    art, m = check_artifact(verified, allow_unverified=False)  # 4 query heads, 2 KV heads, width 192
    cmd, _ = command(art, m, ServeConfig(artifact=str(art), tensor_parallel_size=2))
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    check_tensor_parallel(art, 2)
    with pytest.raises(PrunekitError, match="layer 0.s query heads 4, KV heads 2 in .*\\(1, 2\\)"):
        check_tensor_parallel(art, 3)
    odd = tmp_path / "odd"
    shutil.copytree(verified, odd)
    c = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**c, "num_key_value_heads": 3, "num_attention_heads": 6}))
    with pytest.raises(PrunekitError, match="layer 0's KV heads 3.*--tp 2"):
        Server(ServeConfig(artifact=str(odd), tensor_parallel_size=2, allow_unverified=True))
    # The per-layer layouts are read per layer: a DeciLM artifact with one odd width names that layer.
    blocks = [{"attention": {"n_heads_in_group": 2}, "ffn": {"intermediate_size": w}} for w in (192, 96, 101)]
    (odd / "config.json").write_text(json.dumps({**c, "block_configs": blocks}))
    with pytest.raises(PrunekitError, match="layer 2's MLP width 101"):
        check_tensor_parallel(odd, 2)
    blocks[2]["ffn"]["intermediate_size"] = 100
    (odd / "config.json").write_text(json.dumps({**c, "block_configs": blocks}))
    check_tensor_parallel(odd, 2)
