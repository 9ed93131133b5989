"""ONNX graphs with the KV cache as explicit inputs and outputs, named as optimum names them.

Exported with torch.onnx.export(dynamo=True) in the main environment (optimum's exporter pins
transformers < 4.58 and cannot share it). Inputs: input_ids, attention_mask, position_ids,
past_key_values.N.key/value [batch, kv_heads_N, past, head_dim]; outputs: logits, present.N.key/value.
Per-layer widths export the same way: each layer's cache simply has its own KV-head count. Norms, rotary
embedding and attention are opset-23 operators (export/onnx_ops.py), so the cache is read at the KV head count.

`cache="inplace"` (opset 24; export's default, --onnx-cache) writes a graph for a preallocated cache instead,
as onnxruntime-genai's graphs use one: past_key_values.N.* are buffers [batch, capacity, kv_heads * head_dim], a
`cache_position` input [batch] says where this step's tokens go, attention_mask [batch, capacity] marks the
slots that hold tokens (this step's included), logits are the last position's [batch, 1, vocab], and
present.N.* are the same buffers with this step written in. A runner that binds each present output to its past
input's memory (onnxruntime I/O binding; prunekit's OrtLM does) never copies the cache; one that does not still
gets correct results, at a copy per step. optimum does not know this contract: it runs cache="concat".
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from prunekit.errors import PrunekitError

from .config import CACHES
from .onnx_ops import OPSET, OPSET_INPLACE, standard_ops

STANDARD_DOMAINS = ("", "ai.onnx")  # the default ONNX operator set; anything else needs custom kernels
ONNX_FILE = "model.onnx"


class WithCache(nn.Module):
    """A causal LM as a pure function of (ids, mask, positions, flat past) -> (logits, flat present)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2])), config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        return flat(out)


def flat(out) -> tuple:
    """(logits, key 0, value 0, key 1, ...): a model output as the graph's outputs."""
    return (out.logits, *(t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)))


class WithBuffer(WithCache):
    """As WithCache, for a preallocated cache buffer (cache="inplace"): the mask over the buffer is built here
    once (a slot is visible to a query when it holds a token and is not after the query's own position) and
    handed to every attention module through `ctx`, the dict standard_ops gave them."""

    def __init__(self, model, ctx: dict):
        super().__init__(model)
        self.ctx = ctx

    def forward(self, input_ids, attention_mask, position_ids, cache_position, *past):
        from transformers import DynamicCache

        seq, cap = input_ids.shape[1], past[0].shape[1]
        query = cache_position[:, None] + torch.arange(seq)  # [batch, seq]: each new token's slot
        visible = (torch.arange(cap) <= query[..., None]) & attention_mask[:, None, :].bool()
        self.ctx.update(mask=visible[:, None], index=cache_position)  # mask [batch, 1, seq, capacity]
        cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2])), config=self.model.config)
        # No mask to transformers: attention takes the one above (transformers' would span capacity + seq). Logits of
        # the last position only: a decoding loop needs no more, and a prompt's full logits (batch x prompt x vocab
        # floats: 200 MB for 8 x 128 tokens of a 49k vocabulary) cost the prefill time and memory for nothing.
        out = self.model(
            input_ids=input_ids, position_ids=position_ids, past_key_values=cache, use_cache=True, logits_to_keep=1
        )
        return flat(out)


def kv_heads(model) -> list[int]:
    from prunekit.families import family_for_config, get_module, head_dim

    fam = family_for_config(model.config)
    hd = head_dim(model.config)
    return [getattr(getattr(layer, fam.attn), fam.k).weight.shape[0] // hd for layer in get_module(model, fam.layers)]


def io_names(n_layers: int, cache: str = "concat") -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    extra = ["cache_position"] if cache == "inplace" else []
    return ["input_ids", "attention_mask", "position_ids", *extra, *past], ["logits", *present]


def sample_inputs(model, batch: int = 2, seq: int = 3, past: int = 4, cache: str = "concat"):
    from prunekit.families import head_dim

    hd = head_dim(model.config)
    if cache == "inplace":  # the buffer holds the past, this step and room after: a length no other input has
        length = past + seq + 5
        kv = [torch.randn(batch, length, h * hd) for h in kv_heads(model) for _ in (0, 1)]
    else:
        kv = [torch.randn(batch, h, past, hd) for h in kv_heads(model) for _ in (0, 1)]
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    pos = torch.arange(past, past + seq).expand(batch, seq)
    if cache == "inplace":
        mask = torch.zeros(batch, length, dtype=torch.long)
        mask[:, : past + seq] = 1
        return (ids, mask, pos, torch.full((batch,), past), *kv)
    return (ids, torch.ones(batch, past + seq, dtype=torch.long), pos, *kv)


def check_domains(path: str | Path, allow: tuple[str, ...] = ()) -> list[str]:
    """Fail unless every node uses a standard ONNX domain, or is one of the contrib ops `allow` names (a
    quantized graph's MatMulNBits); returns the op types used."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    bad = sorted(
        {
            f"{n.domain}::{n.op_type}"
            for n in m.graph.node
            if n.domain not in STANDARD_DOMAINS and not (n.domain == "com.microsoft" and n.op_type in allow)
        }
    )
    local = {f.name for f in m.functions}
    calls = sorted({n.op_type for n in m.graph.node if n.op_type in local})
    if bad or calls:
        raise PrunekitError(
            f"{path}: non-standard ONNX operators {bad or calls}; stock onnxruntime would need "
            "custom kernels. This is an exporter bug: report it with the model config."
        )
    return sorted({n.op_type for n in m.graph.node})


def own_error(e: BaseException) -> PrunekitError | None:
    """The PrunekitError (a refusal with its fix, raised while tracing) inside the exporter's error, if any."""
    while e is not None and not isinstance(e, PrunekitError):
        e = e.__cause__ or e.__context__
    return e


def export_onnx(model, out_dir: Path, cache: str = "inplace") -> dict:
    """Export `model` (fp32, eval) to out_dir/model.onnx (+ model.onnx.data). Returns a summary."""
    if cache not in CACHES:
        raise PrunekitError(f"unknown ONNX cache {cache!r}: choose one of {', '.join(CACHES)}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    n = len(kv_heads(model))
    inputs, outputs = io_names(n, cache)
    args = sample_inputs(model, cache=cache)
    b, s, p = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("past")
    # forward(*past) is one argument to torch.export: its shapes go in one tuple.
    ctx: dict | None = None
    if cache == "inplace":  # the mask spans the buffer (one length, "past"); cache_position one per row
        ctx = {}
        past_shapes = tuple({0: b, 1: p} for _ in range(2 * n))
        shapes = ({0: b, 1: s}, {0: b, 1: p}, {0: b, 1: s}, {0: b}, past_shapes)
        wrapped = WithBuffer(model, ctx).eval()
    else:
        past_shapes = tuple({0: b, 2: p} for _ in range(2 * n))
        shapes = ({0: b, 1: s}, {0: b, 1: torch.export.Dim.DYNAMIC}, {0: b, 1: s}, past_shapes)
        wrapped = WithCache(model).eval()
    opset = OPSET_INPLACE if cache == "inplace" else OPSET
    # The exporter logs a line per missing torchvision op and warns about merged axis names: noise here.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings(), standard_ops(model, ctx):
        warnings.simplefilter("ignore")
        try:
            prog = torch.onnx.export(
                wrapped,
                args,
                dynamo=True,
                opset_version=opset,
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=shapes,
                verbose=False,
            )
        except Exception as e:  # noqa: BLE001 (the exporter wraps what the traced code raised in its own errors)
            mine = own_error(e)
            if mine is None:
                raise
            raise mine from None  # the refusal alone, not the exporter's pages around it
    path = out_dir / ONNX_FILE
    # External data always: the weights live beside the graph, so >2 GB models work the same way.
    prog.save(str(path), external_data=True)
    ops = check_domains(path)
    return {
        "file": f"onnx/{ONNX_FILE}",
        "opset": opset,
        "cache": cache,
        "inputs": inputs,
        "outputs": outputs,
        "op_types": ops,
        "dtype": "float32",
    }
