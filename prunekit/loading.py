"""Safe model loading, used by every stage: a local HF directory or a hub id.

Safe by default: trust_remote_code is off unless asked for, and pickle weights (*.bin, *.pt) are
refused unless the user opts in, because unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import PrunekitError
from .families import family_for_config

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DTYPES = ("bfloat16", "float16", "float32")


def resolve_source(src: str | Path) -> tuple[str, bool]:
    """Return (source, is_local). 'default' means the offline default model."""
    s = str(src)
    if s in ("", "default"):
        from .default_model import ensure_default_model

        return str(ensure_default_model()), True
    p = Path(s).expanduser()
    if p.exists():
        if not p.is_dir():
            raise PrunekitError(f"model path {s} is a file; pass the directory that holds config.json.")
        return str(p), True
    looks_local = s.startswith((".", "/", "~")) or s.count("/") != 1 or not HUB_ID.match(s)
    if looks_local:
        raise PrunekitError(
            f"model path {s} does not exist. Pass an existing local HF directory or a hub id of the form org/name."
        )
    return s, False


def check_safetensors(f: Path) -> None:
    """A safetensors file whose header parses and whose size covers every tensor it lists: a file cut short
    by an interrupted download or copy is caught here, by its header alone, before any weight is read."""
    size = f.stat().st_size
    fix = "the file is cut short or corrupt; re-download or re-save the checkpoint."
    with open(f, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise PrunekitError(f"{f} has no complete safetensors header ({size} bytes); {fix}")
        try:
            header = json.loads(fh.read(n))
            if not isinstance(header, dict):
                raise TypeError("the header is not a JSON object")
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise PrunekitError(f"{f} has an unreadable safetensors header ({e}); {fix}") from e
    if 8 + n + end > size:
        raise PrunekitError(f"{f} holds {size:,} bytes but its header lists {8 + n + end:,}; {fix}")


def check_local_dir(path: Path, allow_pickle: bool) -> None:
    if not (path / "config.json").is_file():
        raise PrunekitError(
            f"{path} has no config.json, so it is not a Hugging Face model directory. "
            "Pass the directory that save_pretrained wrote."
        )
    files = [f.name for f in path.iterdir() if f.is_file()]
    if any(f.endswith(".safetensors") for f in files):
        for f in sorted(files):
            if f.endswith(".safetensors"):
                check_safetensors(path / f)
        index = path / "model.safetensors.index.json"
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (ValueError, KeyError, AttributeError, TypeError) as e:
                raise PrunekitError(
                    f"{index} is not a valid safetensors index ({e}); re-download or re-save the checkpoint."
                ) from e
            missing = sorted(shards - set(files))
            if missing:
                raise PrunekitError(
                    f"{path} lacks weight shard(s) {', '.join(missing[:3])} that its index lists; "
                    "the download or copy is incomplete."
                )
        return
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickles and not allow_pickle:
        raise PrunekitError(
            f"{path} holds only pickle weights ({', '.join(sorted(pickles)[:3])}); loading them can run "
            "arbitrary code. Convert them to safetensors, or pass --allow-pickle if you trust the source."
        )
    if not pickles:
        raise PrunekitError(f"{path} has no weights (*.safetensors); the checkpoint is incomplete.")


def safetensors_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor's shape and file, from the safetensors headers alone (no weight is read)."""
    out = {}
    index = path / "model.safetensors.index.json"
    files = sorted(path.glob("*.safetensors"))
    if index.is_file():  # only the shards the index names: a stale file beside them is not the model
        files = [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    for f in files:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        out.update({k: (tuple(v["shape"]), f.name) for k, v in header.items() if k != "__metadata__"})
    return out


def check_weight_shapes(path: Path, config, trust_remote_code: bool = False) -> None:
    """Refuse a checkpoint whose config.json disagrees with its weights (a wrong intermediate_size, say), by
    comparing the safetensors headers with the shapes the config implies, before any weight loads: transformers
    would fail deep inside its loader with a traceback. Names the first tensor that disagrees and both shapes.
    Per-layer checkpoints (prunekit_layers) are checked by their own loader; tensors the model does not name
    alike (another naming convention) are not compared."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    if getattr(config, "prunekit_layers", None) or getattr(config, "quantization_config", None):
        return  # per-layer: its own loader checks; quantized: packed weights have other shapes by design
    if not any(path.glob("*.safetensors")):
        return
    try:
        with torch.device("meta"):  # a copy: from_config fills in the config's attention implementation
            model = AutoModelForCausalLM.from_config(copy.deepcopy(config), trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 (a model transformers cannot build here is the loader's to report)
        return
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name, (shape, file) in safetensors_shapes(path).items():
        if name in want and want[name] != shape:
            raise PrunekitError(
                f"{path}: tensor {name} in {file} has shape {list(shape)}, but config.json implies "
                f"{list(want[name])}. The config and the weights disagree (e.g. intermediate_size, "
                "num_key_value_heads, head_dim or vocab_size edited, or files from two models): fix config.json "
                "or re-save the checkpoint with save_pretrained."
            )


def load_config(src: str | Path, trust_remote_code: bool = False, check_family: bool = True):
    """Load and check an HF config; returns (config, source, is_local)."""
    from transformers import AutoConfig

    source, is_local = resolve_source(src)
    if is_local and not (Path(source) / "config.json").is_file():
        raise PrunekitError(
            f"{source} has no config.json, so it is not a Hugging Face model directory. "
            "Pass the directory that save_pretrained wrote."
        )
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise PrunekitError(
            f"could not load the config of {source!r}: {e}. Check the hub id and your "
            "network, or pass a local directory."
        ) from e
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise PrunekitError(
                f"{source} needs custom code to load; pass --trust-remote-code only if you have read that code."
            ) from e
        raise PrunekitError(f"could not read the config of {source}: {e}") from e
    if check_family:
        family_for_config(config)
    return config, source, is_local


def load_model(
    src: str | Path = "default",
    dtype: str = "auto",
    device: str = "cpu",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    check_family: bool = True,
):
    """Load a causal LM for pruning or evaluation. Returns (model, family or None, source).

    dtype "auto" is bf16 where this machine runs it natively, else fp32 (see env.compute_dtype)."""
    import torch
    from transformers import AutoModelForCausalLM

    if dtype == "auto":
        from .env import compute_dtype

        dtype = compute_dtype()
    if dtype not in DTYPES:
        raise PrunekitError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
    config, source, is_local = load_config(src, trust_remote_code, check_family)
    if is_local:
        check_local_dir(Path(source), allow_pickle)
        check_weight_shapes(Path(source), config, trust_remote_code)
    if getattr(config, "prunekit_layers", None):
        from .checkpoint import load_per_layer

        model = load_per_layer(source, config, getattr(torch, dtype))
        model.to(device).eval()
        return model, family_for_config(model.config), source
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=getattr(torch, dtype),
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except OSError as e:
        raise PrunekitError(f"could not load the weights of {source!r}: {e}") from e
    model.to(device).eval()
    fam = family_for_config(model.config) if check_family else None
    return model, fam, source


def load_tokenizer(src: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    source, _ = resolve_source(src)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise PrunekitError(
            f"could not load the tokenizer of {source!r}: {e}. The model directory "
            "needs its tokenizer files (tokenizer.json, tokenizer_config.json)."
        ) from e
