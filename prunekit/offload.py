"""Where the weights live and where the math runs (`--device`, `--offload`).

Home is host memory in the dtype the checkpoint is stored in (bf16 for most); compute is the device and
dtype the math runs in (fp32 on a CPU without native bf16, bf16 on AMX or a GPU). Without offloading the
whole model sits at the compute place: the fastest path when it fits. With offloading only the decoder
layer at work is moved there (`Placement.layer`), with the calibration batch's hidden states; the
embedding and the LM head stay home and are used in pieces (rows looked up, the vocabulary in chunks), so
the peak is the home copy plus one layer, its activations and its grams, whatever the depth. A layer goes
back home in the home dtype: the rounding the saved checkpoint gets anyway, applied as each layer is
finished, so later layers are calibrated on what will be written.

The placement rides on the model (`model.prunekit_place`), so the code that runs layers (statistics, cut,
perplexity) asks the model rather than threading an argument through every call.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .errors import PrunekitError
from .families import Family, get_module

ATTR = "prunekit_place"


@dataclass
class Placement:
    device: torch.device
    dtype: torch.dtype  # compute dtype
    home_dtype: torch.dtype | None = None  # None: no offloading, the whole model is at the compute place
    fam: Family | None = None
    _live: dict = field(default_factory=dict)  # id(module) -> nesting depth of layer() on it
    _home: dict = field(default_factory=dict)  # id(module) -> {id(parameter): (parameter, its home tensor)}

    @property
    def offload(self) -> bool:
        return self.home_dtype is not None

    def put(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids where the model's first module reads them (the embedding stays home when offloading)."""
        return ids if self.offload else ids.to(self.device)

    @contextmanager
    def layer(self, module: torch.nn.Module):
        """The module at the compute place for the duration (re-entrant); home again afterwards."""
        if not self.offload:
            yield module
            return
        key = id(module)
        if not self._live.get(key):
            # The parameter itself is held too: while it lives, no new parameter can take its id.
            self._home[key] = {id(p): (p, p.data) for p in module.parameters()}
            module.to(self.device, self.dtype)
        self._live[key] = self._live.get(key, 0) + 1
        try:
            yield module
        finally:
            self._live[key] -= 1
            if not self._live[key]:
                del self._live[key]
                self._go_home(module, self._home.pop(key))

    def _go_home(self, module: torch.nn.Module, home: dict) -> None:
        """A parameter that was there when the layer left home gets its home tensor back: nothing changes
        weights in place while offloading (a cut builds new modules), so no copy and no rounding. The new
        modules a cut made go home in the home dtype. Then the pages of every home tensor this layer had
        leave the process's memory (prunekit.offload.release): they are read again from the file when needed."""
        for p in module.parameters():
            old = home.get(id(p))
            p.data = old[1] if old is not None and old[0] is p else p.data.to("cpu", self.home_dtype)
        module.to("cpu")  # buffers
        release([t for _, t in home.values()])

    def release_home(self, *tensors: torch.Tensor) -> None:
        """After a pass over home weights that stay home (the embedding, the LM head): their pages go."""
        if self.offload:
            release(list(tensors))

    @contextmanager
    def embedding_to_compute(self, model):
        """While open, the embedding's output is moved to the compute place (it is looked up at home)."""
        if not self.offload:
            yield
            return
        emb = model.get_input_embeddings()
        h = emb.register_forward_hook(lambda _m, _a, out: out.to(self.device, self.dtype))
        try:
            yield
        finally:
            h.remove()


MADV_DONTNEED = 4


def _weight_file_maps() -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of *.safetensors files (/proc/self/maps)."""
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[5].endswith(".safetensors"):
                    lo, hi = parts[0].split("-")
                    out.append((int(lo, 16), int(hi, 16)))
    except OSError:
        pass
    return out


def release(tensors: list[torch.Tensor]) -> int:
    """Drop from this process's memory the pages of tensors that are views of a memory-mapped weight file
    (transformers loads safetensors that way when the dtype matches): the kernel reads them again from the
    file (its page cache) on the next access, so contents never change, but the process's resident memory
    holds only the layers at work. Tensors in ordinary memory are left alone (there MADV_DONTNEED would
    zero them). Returns the bytes released. Linux only; elsewhere nothing happens."""
    maps = _weight_file_maps()
    if not maps:
        return 0
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    page = os.sysconf("SC_PAGE_SIZE")
    done = 0
    for t in tensors:
        if t.device.type != "cpu" or t.numel() == 0:
            continue
        lo = t.data_ptr()
        hi = lo + t.numel() * t.element_size()
        if not any(a <= lo and hi <= b for a, b in maps):
            continue
        a, b = -(-lo // page) * page, hi // page * page  # whole pages inside the tensor only
        if b > a and libc.madvise(ctypes.c_void_p(a), ctypes.c_size_t(b - a), MADV_DONTNEED) == 0:
            done += b - a
    return done


class Spill:
    """A list of tensors kept in an unlinked temporary file, not in the process's memory: what a pass caches
    for later (a cut layer's kept MLP inputs) when offloading. Each is written once and read back once; the
    kernel's page cache holds the file while memory allows and writes it to disk under pressure, so the
    process holds one tensor at a time (at the 0.5B shape: 34 MB instead of 0.55 GB). Reads return exactly
    what was written, on the device it came from. The file goes where Python puts temporary files ($TMPDIR,
    else /tmp): where /tmp is a RAM disk, point $TMPDIR at a real disk."""

    def __init__(self) -> None:
        import tempfile

        self._f = tempfile.TemporaryFile(prefix="prunekit-spill-")
        self._at: list[tuple[int, int, torch.Size, torch.dtype, torch.device] | None] = []
        self._end = 0  # where the next tensor goes

    def append(self, t: torch.Tensor) -> None:
        raw = t.detach().to("cpu").contiguous()
        n = raw.numel() * raw.element_size()
        self._f.seek(self._end)
        self._f.write(memoryview(raw.view(-1).view(torch.uint8).numpy()))
        self._at.append((self._end, n, t.shape, t.dtype, t.device))
        self._end += n

    def clear(self) -> None:
        """Drop every entry but keep the file: the next tensors overwrite pages the page cache already holds.
        A fresh file per cut layer allocates its pages anew (the spill writes were 4% of a 0.5B compress in the
        profile of issue 15's note), so one Spill serves every layer of a pass."""
        self._at, self._end = [], 0

    def __len__(self) -> int:
        return len(self._at)

    def __getitem__(self, i: int) -> torch.Tensor:
        offset, n, shape, dtype, device = self._at[i]
        if n == 0:
            return torch.empty(shape, dtype=dtype, device=device)
        buf = bytearray(n)
        self._f.seek(offset)
        if self._f.readinto(buf) != n:
            raise OSError(f"spill file cut short at tensor {i}")
        return torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(shape).to(device)

    def __setitem__(self, i: int, value: None) -> None:
        assert value is None, "a Spill entry can only be dropped"
        self._at[i] = None  # read once: its bytes stay in the file until close, outside the process's memory

    def close(self) -> None:
        self._f.close()


class _Stop(Exception):
    pass


def first_layer_inputs(model, first_layer, id_batches) -> tuple[list[torch.Tensor], list[dict]]:
    """The hidden states and keyword arguments (position embeddings, masks) that the first decoder layer
    receives for each batch of token ids: the model runs up to that layer and stops."""
    place = placement(model)
    hidden, kwargs = [], []

    def catch(_mod, args, kw):
        hidden.append(args[0] if args else kw.pop("hidden_states"))
        kwargs.append({k: v for k, v in kw.items() if k != "hidden_states"})
        raise _Stop

    h = first_layer.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        with torch.no_grad(), place.embedding_to_compute(model):
            for ids in id_batches:
                try:
                    model(input_ids=place.put(ids), use_cache=False)
                except _Stop:
                    pass
    finally:
        h.remove()
    place.release_home(model.get_input_embeddings().weight)
    return hidden, kwargs


def placement(model) -> Placement:
    """The model's placement; a model that was not placed computes where its weights are."""
    place = getattr(model, ATTR, None)
    if place is None:
        p = next(model.parameters())
        place = Placement(p.device, p.dtype)
    return place


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise PrunekitError(
            "--device cuda: this machine has no CUDA device torch can use (torch "
            f"{torch.__version__}); use --device cpu or auto."
        )
    if device not in ("cpu", "cuda"):
        raise PrunekitError(f"--device {device!r} is not one of cpu, cuda, auto.")
    return torch.device(device)


def free_bytes(device: torch.device) -> int:
    """Memory a model could take on the device: free GPU memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: assume it fits


def decide(
    offload: str,
    n_params: int | None,
    compute: torch.dtype,
    stored: torch.dtype,
    device: torch.device,
    needs_whole_model: str | None,
    sharing: int = 1,
) -> tuple[torch.dtype | None, str]:
    """(home dtype or None for no offloading, why). `auto` offloads when the model at the compute place
    would take more than half of the device's free memory (the rest is for activations, grams and the
    held-out logits), counting `sharing` processes that load it on the same device or host, and only where
    offloading saves memory (a GPU, or weights stored narrower than they compute). `needs_whole_model` names
    the setting that runs the whole model at once (gradients, recovery, the KL search), which offloading
    cannot serve."""
    home = stored if stored.itemsize < compute.itemsize else compute
    if offload == "off":
        return None, "--offload off"
    if offload == "on":
        if needs_whole_model:
            raise PrunekitError(
                f"--offload on runs one decoder layer at a time, but {needs_whole_model} needs the "
                "whole model at once: use --offload off (or auto), or drop that setting."
            )
        return home, "--offload on"
    name = str(compute).replace("torch.", "")
    if device.type == "cpu" and home == compute:
        return None, f"the weights are kept in {name}, as they compute: offloading would save nothing"
    if not n_params:
        return None, "the model's size is not stated by its config: the whole model at once"
    size = n_params * compute.itemsize * sharing
    free = free_bytes(device)
    if size <= free // 2:
        return (
            None,
            f"the model takes {size / 2**30:.1f} GiB in {name}{per(sharing)}, "
            f"{free / 2**30:.1f} GiB free on {device.type}: fits",
        )
    if needs_whole_model:
        raise PrunekitError(
            f"the model takes {size / 2**30:.1f} GiB in {name}{per(sharing)} with "
            f"{free / 2**30:.1f} GiB free on {device.type}, too much to hold at once, and "
            f"{needs_whole_model} needs it whole: drop that setting to prune layer by layer "
            "(--offload on), or use a machine with more memory."
        )
    return (
        home,
        f"the model takes {size / 2**30:.1f} GiB in {name}{per(sharing)}, more than half "
        f"of the {free / 2**30:.1f} GiB free on {device.type}: one layer at a time",
    )


def per(sharing: int) -> str:
    return f" for {sharing} processes" if sharing > 1 else ""


def place(model, fam: Family, device: torch.device, compute: torch.dtype, home: torch.dtype | None) -> Placement:
    """Put a model loaded at home (host, `home` dtype when offloading, else `compute`) where it computes."""
    p = Placement(device, compute, home, fam)
    if home is None:
        model.to(device)
    else:
        layers = get_module(model, fam.layers)
        norm = get_module(model, fam.final_norm)
        norm.to(device, compute)
        # What else the base model holds (rotary embedding tables) is small; its buffers keep their dtype.
        base = model.base_model
        for _name, child in base.named_children():
            if child is not layers and child is not norm and child is not model.get_input_embeddings():
                child.to(device)
    setattr(model, ATTR, p)
    return p


def unplace(model) -> None:
    """Everything back on the host (before saving); the placement is forgotten."""
    model.to("cpu")
    if hasattr(model, ATTR):
        delattr(model, ATTR)
