"""The one check every flag naming a model goes through before any expensive work.

A model argument is a `.gguf` file, a model folder (config, safetensors weights, tokenizer), a PEFT
adapter folder (transformers loads its base and applies it), or a Hugging Face Hub id. Anything that
exists on disk must be one of the first three; anything that looks like a path must exist; a Hub id is
passed to the Hub loader unchanged, except offline (`HF_HUB_OFFLINE`), where it must be in the local
cache. Every failure is a `ModelArgumentError` that names the flag, says what was expected and what was
found, and is raised in milliseconds: only headers are read, never tensors.
"""

from __future__ import annotations

import json
import mmap
import re
import struct
from pathlib import Path

from gguf.constants import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType
from gguf.gguf_reader import READER_SUPPORTED_VERSIONS
from huggingface_hub import is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Files any one of which lets AutoTokenizer build the tokenizer of a folder.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")
GGUF_EXPECTED = "a model folder (config.json, safetensors weights, tokenizer), a .gguf file, or a Hub id"


class ModelArgumentError(ValueError):
    """A model flag names something that cannot be loaded as a model; the message says what to pass."""


def check_model_argument(value: str, flag: str, weights: bool = True) -> str:
    """What `value` is ("gguf", "folder", "adapter" or "hub"), or a `ModelArgumentError` naming `flag`.

    `weights=False` accepts a folder that holds only a tokenizer: what an OpenAI-compatible server's
    engine reads from the model path (the server holds the weights).
    """
    path = Path(value).expanduser()
    if path.is_file():
        _check_gguf(path, flag)
        return "gguf"
    if path.is_dir():
        return _check_folder(path, flag, weights)
    if path.suffix == ".gguf":
        raise ModelArgumentError(f"{flag} {value}: GGUF file not found")
    if looks_like_path(value):
        raise ModelArgumentError(f"{flag} {value}: no such file or folder (expected {GGUF_EXPECTED})")
    try:
        validate_repo_id(value)
    except HFValidationError as err:
        raise ModelArgumentError(
            f"{flag} {value!r} is neither an existing file or folder nor a Hub id ({err}); "
            f"expected {GGUF_EXPECTED}"
        ) from None
    if is_offline_mode() and not _in_hub_cache(value):
        raise ModelArgumentError(
            f"{flag} {value}: no such file or folder, and, as a Hub id, not in the local Hugging Face cache "
            f"while HF_HUB_OFFLINE is set. Download it first (`hf download {value}`), unset HF_HUB_OFFLINE, "
            "or pass a local model folder or .gguf file."
        )
    return "hub"


def check_model_flags(flags: dict[str, str | None], weights: bool = True) -> None:
    """`check_model_argument` for every flag given a value ({flag: value}); unset flags are skipped."""
    for flag, value in flags.items():
        if value is not None:
            check_model_argument(value, flag, weights)


def looks_like_path(value: str) -> bool:
    """Absolute, `~`, `./` or `../`, a backslash, or more separators than a Hub `org/name` has."""
    return (
        value.startswith(("/", "~", "./", "../", "."))
        or "\\" in value
        or value.count("/") > 1
        or bool(re.match(r"^[A-Za-z]:", value))  # a Windows drive
    )


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the Hub cache holds the repo's config or tokenizer config (what loading reads first)."""
    return any(
        isinstance(try_to_load_from_cache(repo_id, name), str) for name in (CONFIG, "tokenizer_config.json")
    )


def adapter_base(folder: Path) -> str | None:
    """The base model a PEFT adapter folder names (`base_model_name_or_path`); None for other folders."""
    if (folder / CONFIG).is_file() or not (folder / ADAPTER_CONFIG).is_file():
        return None
    return json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


# --- folders ---------------------------------------------------------------------------------------


def _listing(folder: Path, show: int = 8) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "an empty folder"
    more = f", ... ({len(names)} entries)" if len(names) > show else ""
    return "a folder holding " + ", ".join(names[:show]) + more


def _check_folder(folder: Path, flag: str, weights: bool) -> str:
    if (folder / ADAPTER_CONFIG).is_file() and not (folder / CONFIG).is_file():
        return _check_adapter(folder, flag, weights)
    if not weights and has_tokenizer(folder):  # a server holds the model: the folder gives the tokenizer
        return "folder"
    ggufs = sorted(folder.glob("*.gguf"))
    if not (folder / CONFIG).is_file():
        hint = f"; to load the GGUF inside, pass the file: {flag} {ggufs[0]}" if ggufs else ""
        raise ModelArgumentError(
            f"{flag} {folder}: not a model folder: expected {CONFIG} with safetensors weights and a "
            f"tokenizer, found {_listing(folder)}{hint}"
        )
    _read_json(folder / CONFIG, flag)
    if weights:
        _check_weights(folder, flag)
    if not has_tokenizer(folder):
        raise ModelArgumentError(
            f"{flag} {folder}: no tokenizer (expected one of {', '.join(TOKENIZER_FILES)}); save the "
            "model's tokenizer into the folder (`tokenizer.save_pretrained(folder)`)"
        )
    return "folder"


def _check_weights(folder: Path, flag: str) -> None:
    """safetensors weights, one file or shards listed by an index, each complete."""
    if (folder / WEIGHTS_INDEX).is_file():
        index = _read_json(folder / WEIGHTS_INDEX, flag)
        shards = sorted(set(index.get("weight_map", {}).values()))
        if not shards:
            raise ModelArgumentError(f"{flag} {folder / WEIGHTS_INDEX}: its weight_map lists no shard files")
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ModelArgumentError(
                f"{flag} {folder}: {len(missing)} of the {len(shards)} weight shards its {WEIGHTS_INDEX} "
                f"lists are missing ({', '.join(missing[:3])}); copy or download them again"
            )
        for shard in shards:
            _check_safetensors(folder / shard, flag)
    elif (folder / WEIGHTS).is_file():
        _check_safetensors(folder / WEIGHTS, flag)
    else:
        pickled = [name for name in PICKLED_WEIGHTS if (folder / name).is_file()]
        found = (
            f"only pickled PyTorch weights ({', '.join(pickled)}), which selftaught never loads "
            "(loading a pickle can run code); convert them to safetensors"
            if pickled
            else _listing(folder)
        )
        raise ModelArgumentError(
            f"{flag} {folder}: no weights: expected {WEIGHTS} (or shards with {WEIGHTS_INDEX}), found {found}"
        )


def _check_adapter(folder: Path, flag: str, weights: bool) -> str:
    """A PEFT adapter folder: complete adapter weights, and a base model that passes this same check."""
    base = adapter_base(folder)
    if not base:
        raise ModelArgumentError(
            f"{flag} {folder}: a PEFT adapter folder whose {ADAPTER_CONFIG} names no "
            "base_model_name_or_path; set it to the base model's folder or Hub id"
        )
    if weights:
        if not (folder / ADAPTER_WEIGHTS).is_file():
            raise ModelArgumentError(
                f"{flag} {folder}: a PEFT adapter folder without {ADAPTER_WEIGHTS}; found {_listing(folder)}"
            )
        _check_safetensors(folder / ADAPTER_WEIGHTS, flag)
    check_model_argument(base, f"{flag} (the base model of adapter {folder})", weights)
    return "adapter"


def _read_json(path: Path, flag: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelArgumentError(f"{flag} {path}: not valid JSON ({err}); restore the file") from None


def _check_safetensors(path: Path, flag: str) -> None:
    """The header is complete JSON and the file is as long as the tensors it lists need.

    safetensors' own `safe_open` would also refuse a cut file, but says only "MetadataIncompleteBuffer";
    the header (an 8-byte length, then JSON) gives the sizes to tell the user what is missing.
    """
    size = path.stat().st_size
    cut = f"{flag} {path}: truncated safetensors file"
    advice = "it was probably cut off while downloading or copying: fetch it again"
    if size < 8:
        raise ModelArgumentError(f"{cut} ({size} bytes, not even a header length); {advice}")
    with path.open("rb") as f:
        (header_length,) = struct.unpack("<Q", f.read(8))
        if 8 + header_length > size:
            raise ModelArgumentError(
                f"{cut}: its header alone needs {8 + header_length:,} bytes, the file has {size:,}; {advice}"
            )
        try:
            header = json.loads(f.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelArgumentError(
                f"{flag} {path}: not a safetensors file (its header is not JSON)"
            ) from None
    ends = [t["data_offsets"][1] for name, t in header.items() if name != "__metadata__"]
    needed = 8 + header_length + max(ends, default=0)
    if size < needed:
        raise ModelArgumentError(
            f"{cut}: its {len(ends)} tensors need {needed:,} bytes, the file has {size:,}; {advice}"
        )


# --- GGUF ------------------------------------------------------------------------------------------

# Fixed sizes of GGUF metadata values (everything but strings and arrays).
_SCALAR_SIZES = {
    GGUFValueType.UINT8: 1,
    GGUFValueType.INT8: 1,
    GGUFValueType.BOOL: 1,
    GGUFValueType.UINT16: 2,
    GGUFValueType.INT16: 2,
    GGUFValueType.UINT32: 4,
    GGUFValueType.INT32: 4,
    GGUFValueType.FLOAT32: 4,
    GGUFValueType.UINT64: 8,
    GGUFValueType.INT64: 8,
    GGUFValueType.FLOAT64: 8,
}
_DEFAULT_ALIGNMENT = 32


class _Header:
    """Reads a GGUF header front to back from a memory-mapped file: metadata, then tensor infos.

    Written here rather than with gguf's `GGUFReader` (which transformers uses to load) because that
    reader turns every metadata array element into a numpy view: 20 s for the 135M model's tokenizer
    on this project's 2-core machine, where the three facts we need take milliseconds.
    """

    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        length = self.take("Q")
        text = self.data[self.offset : self.offset + length]
        self.offset += length
        return bytes(text).decode("utf-8", errors="replace")

    def value(self, kind: int):
        """A metadata value: strings, and integers (floats come back as their raw bits: none is needed);
        arrays are skipped (None)."""
        if kind == GGUFValueType.STRING:
            return self.string()
        if kind == GGUFValueType.ARRAY:
            item_kind, count = self.take("IQ")
            if item_kind in _SCALAR_SIZES:
                self.offset += count * _SCALAR_SIZES[GGUFValueType(item_kind)]
            elif item_kind == GGUFValueType.STRING:  # a vocabulary: skipped without decoding
                for _ in range(count):
                    self.offset += 8 + struct.unpack_from("<Q", self.data, self.offset)[0]
            else:
                for _ in range(count):
                    self.value(item_kind)
            return None
        size = _SCALAR_SIZES[GGUFValueType(kind)]
        raw = self.data[self.offset : self.offset + size]
        self.offset += size
        return int.from_bytes(raw, "little")


def _check_gguf(path: Path, flag: str) -> None:
    """GGUF magic, a version the reader handles, an architecture transformers loads, and every tensor's
    bytes present. Any other file is not a model."""
    size = path.stat().st_size
    found = f"{flag} {path}"
    if size == 0:
        raise ModelArgumentError(
            f"{found}: the file is empty (0 bytes), not a model; expected {GGUF_EXPECTED}"
        )
    with path.open("rb") as f:
        head = f.read(8)
    if len(head) < 4 or int.from_bytes(head[:4], "little") != GGUF_MAGIC:
        if path.suffix == ".gguf":
            raise ModelArgumentError(
                f"{found}: not a GGUF file: it starts with {head[:4]!r}, a GGUF file with b'GGUF'"
            )
        hint = "; pass the folder holding it with its config.json" if path.suffix == ".safetensors" else ""
        raise ModelArgumentError(
            f"{found}: a file that is not a model ({size:,} bytes starting with {head[:4]!r}); "
            f"expected {GGUF_EXPECTED}{hint}"
        )
    if path.suffix != ".gguf":
        raise ModelArgumentError(f"{found}: a GGUF file without the .gguf suffix; rename it to end in .gguf")
    version = int.from_bytes(head[4:8], "little") if len(head) == 8 else None
    if version not in READER_SUPPORTED_VERSIONS:
        raise ModelArgumentError(
            f"{found}: GGUF version {version}, but the installed gguf reader handles versions "
            f"{READER_SUPPORTED_VERSIONS}; convert the model with a matching llama.cpp, or upgrade gguf"
        )
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            architecture, needed = _gguf_extent(_Header(data))
        except (struct.error, ValueError, KeyError) as err:
            raise ModelArgumentError(
                f"{found}: truncated or damaged GGUF header ({type(err).__name__}: {err}); "
                "fetch the file again"
            ) from None
    if size < needed:
        raise ModelArgumentError(
            f"{found}: truncated GGUF file: its tensors need {needed:,} bytes, the file has {size:,}; it was "
            "probably cut off while downloading or copying: fetch it again"
        )
    _check_gguf_architecture(architecture, found)


def _gguf_extent(header: _Header) -> tuple[str | None, int]:
    """(general.architecture, bytes the file needs): metadata, tensor infos, alignment, tensor data."""
    header.offset = 8
    tensor_count, kv_count = header.take("QQ")
    fields = {}
    for _ in range(kv_count):
        key = header.string()
        fields[key] = header.value(header.take("I"))
    end = 0
    for _ in range(tensor_count):
        header.string()
        dims = [header.take("Q") for _ in range(header.take("I"))]
        kind, offset = header.take("IQ")
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        elements = 1
        for dim in dims:
            elements *= dim
        end = max(end, offset + elements // block * block_bytes)
    alignment = fields.get("general.alignment") or _DEFAULT_ALIGNMENT
    data_start = -(-header.offset // alignment) * alignment
    return fields.get("general.architecture"), data_start + end


def _check_gguf_architecture(architecture: str | None, found: str) -> None:
    """transformers' GGUF loader reads only some architectures (its GGUF_SUPPORTED_ARCHITECTURES, matched
    as its loader matches them: "qwen2moe" is qwen2_moe, "gpt-oss" gpt_oss, any "t5" a T5)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    def canonical(name: str) -> str:
        return name.replace("-", "").replace("_", "")

    supported = {canonical(a) for a in GGUF_SUPPORTED_ARCHITECTURES} - {"general", "tokenizer"}
    if architecture is None:
        raise ModelArgumentError(
            f"{found}: a GGUF file without general.architecture; not a model transformers loads"
        )
    if canonical(architecture) not in supported and "t5" not in architecture:
        raise ModelArgumentError(
            f"{found}: a GGUF of architecture {architecture!r}, which transformers cannot load from GGUF "
            f"(it reads {', '.join(sorted(supported))}); use the model's safetensors folder or Hub id"
        )
