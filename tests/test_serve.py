"""serve: a tiny artifact behind vLLM's OpenAI server, the load client, and the refusals."""
from __future__ import annotations

import json
import shutil
import socket
import urllib.error
import urllib.request

import pytest

from conftest import tiny_checkpoint
from prunekit.errors import PrunekitError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, key: str | None = None) -> dict:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def verified(tmp_path_factory):
    """A uniform tiny Llama artifact that passed verify (transformers, for speed)."""
    from prunekit.export.run import export
    from prunekit.export.verify import verify

    d = tmp_path_factory.mktemp("serve")
    src = tiny_checkpoint(d / "src", "llama", widths=[192] * 3)
    export(str(src), str(d / "art"), tokens=8, onnx=False, log=lambda m: None)
    assert verify(d / "art", runtimes=("transformers",), log=lambda m: None)["passed"]
    return d / "art"


@pytest.mark.slow
def test_server_answers_as_verify_and_stops_cleanly(verified, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prunekit.export.greedy import torch_greedy
    from prunekit.serve.load import LoadOptions, run_load
    from prunekit.serve.server import ServeOptions, Server, models

    ref = json.loads((verified / "prunekit.json").read_text())["reference"]
    messages = [{"role": "user", "content": "Say hi."}]
    tok = AutoTokenizer.from_pretrained(verified)
    chat_ids = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    model = AutoModelForCausalLM.from_pretrained(verified, dtype=torch.float32)
    chat_ref = torch_greedy(model, [chat_ids], 8)[0][0]

    opt = ServeOptions(port=free_port(), api_key="s3cret", kv_cache_gib=0.05, max_model_len=128)
    with Server(verified, opt, log_path=tmp_path / "vllm.log") as srv:
        pgid = srv.proc.pid
        assert srv.url.startswith("http://127.0.0.1:")
        assert models(srv.url, "s3cret") == ["art"]
        with pytest.raises(urllib.error.HTTPError) as e:
            post(srv.url + "/v1/completions", {"model": "art", "prompt": "hi", "max_tokens": 2})
        assert e.value.code == 401
        for ids, expected in zip(ref["prompt_ids"], ref["tokens"]):
            out = post(srv.url + "/v1/completions", {"model": "art", "prompt": ids, "max_tokens": 8, "temperature": 0,
                                                     "ignore_eos": True, "return_token_ids": True}, "s3cret")
            assert out["choices"][0]["token_ids"] == expected
        out = post(srv.url + "/v1/chat/completions", {"model": "art", "messages": messages, "max_tokens": 8,
                                                      "temperature": 0, "ignore_eos": True, "return_token_ids": True},
                   "s3cret")
        assert out["choices"][0]["token_ids"] == chat_ref
        load = run_load(srv.url, LoadOptions(model="art", concurrency=2, requests=6, max_tokens=8, api_key="s3cret"))
        assert load["errors"] == 0 and load["requests"] == 6 and load["output_tokens"] == 6 * 8, load
        assert load["ttft_p50_s"] <= load["latency_p50_s"]
    from prunekit.serve.server import group_alive
    assert srv.proc.returncode is not None and group_alive(pgid) == []  # nothing of the server is left running


def test_serve_refuses_unverified_failed_and_tampered(verified, tmp_path):
    from prunekit.serve.server import check_artifact

    art = tmp_path / "art"
    shutil.copytree(verified, art)
    m = json.loads((art / "prunekit.json").read_text())
    check_artifact(art, allow_unverified=False)  # the verified one is accepted
    for verify_state, match in ((None, "has not been verified"), ({"passed": False, "runtimes": {"vllm": False}},
                                                                     "failed verify \\(vllm\\)")):
        (art / "prunekit.json").write_text(json.dumps({**m, "verify": verify_state}))
        with pytest.raises(PrunekitError, match=match):
            check_artifact(art, allow_unverified=False)
    with pytest.raises(PrunekitError, match="not a prunekit artifact"):
        check_artifact(tmp_path, allow_unverified=True)
    with pytest.raises(PrunekitError, match="does not exist"):
        check_artifact(tmp_path / "nope", allow_unverified=True)


def test_serve_refuses_tampered_per_layer_code(tmp_path):
    from prunekit.export.run import export
    from prunekit.serve.server import check_artifact

    src = tiny_checkpoint(tmp_path / "src", "qwen2", widths=[64, 256, 128])
    export(str(src), str(tmp_path / "art"), tokens=2, onnx=False, log=lambda m: None)
    check_artifact(tmp_path / "art", allow_unverified=True)
    code = tmp_path / "art" / "modeling_prunekit.py"
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
    from prunekit.serve.server import ServeOptions, check_artifact, command

    art, m = check_artifact(verified, allow_unverified=False)
    cmd, env = command(art, m, ServeOptions(api_key="k"))
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert "--trust-remote-code" not in cmd and "k" not in cmd and env["VLLM_API_KEY"] == "k"
    assert cmd[cmd.index("--served-model-name") + 1] == "art"
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
