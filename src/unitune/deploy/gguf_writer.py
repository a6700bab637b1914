"""Write a transformers model (a merged run) as one GGUF file for llama.cpp and Ollama, with the gguf package.

What llama.cpp's own converter (convert_hf_to_gguf.py) does for these architectures, done here without
llama.cpp: the hyper-parameters under the GGUF architecture's keys; the q/k rows of Llama-family models
permuted from transformers' rotate-half layout into llama.cpp's interleaved one (not Qwen2's); no
``output.weight`` for tied embeddings (llama.cpp then reuses ``token_embd``); the vocabulary with each token's
type, the merges, the special-token ids, the add-BOS/EOS flags, the chat template and the pre-tokenizer name
that tells llama.cpp how to split text before BPE.

Tensors are converted and written one at a time, so memory stays at the model plus one tensor.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..console import bar
from ..errors import UserError

ARCHS = {  # transformers architecture: (GGUF architecture, permute q/k for llama.cpp's rotary layout)
    "LlamaForCausalLM": ("LLAMA", True),
    "MistralForCausalLM": ("LLAMA", True),
    "Qwen2ForCausalLM": ("QWEN2", False),
}
QUANTS = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
          "q8_0": ("Q8_0", "MOSTLY_Q8_0")}  # --quant: (tensor type of 2-D weights, general.file_type)

# How llama.cpp names the pre-tokenizers unitune recognises, by their transformers tokenizer.json shape.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PRE = {LLAMA3_SPLIT: "llama-bpe", LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}"): "qwen2"}
ROPE_TYPES = ("default", "linear", "llama3")


def supported() -> str:
    return ", ".join(sorted(ARCHS))


def gguf_arch(config):
    """(gguf.MODEL_ARCH, permute q/k) for a model config, or a one-line error naming the supported ones."""
    import gguf

    found = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    if found not in ARCHS:
        raise UserError(f"GGUF export supports {supported()}; this model is {found}; use --format safetensors for "
                        "a merged model folder, or llama.cpp's convert_hf_to_gguf.py on it")
    name, permute = ARCHS[found]
    return getattr(gguf.MODEL_ARCH, name), permute


def check_supported(config, tokenizer_json: dict) -> None:
    """Everything the writer would refuse, from the config and tokenizer.json alone: before any merge is done."""
    gguf_arch(config)
    tokenizer_kind(tokenizer_json)
    _, kind = rope_settings(config)
    if kind not in ROPE_TYPES:
        raise UserError(f"GGUF export does not support rope scaling '{kind}' yet (it supports "
                        f"{', '.join(ROPE_TYPES)}); use --format safetensors")


def rope_settings(config) -> tuple[dict, str]:
    """The config's rotary parameters (transformers 5's rope_parameters, older rope_scaling) and their type."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    return params, params.get("rope_type", params.get("type", "default"))


def tokenizer_kind(tokenizer_json: dict) -> str:
    """llama.cpp's tokenizer model for a transformers tokenizer.json: llama (SentencePiece-style) or gpt2."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") == "BPE" and model.get("byte_fallback"):  # Llama 2, Mistral
        return "llama"
    if model.get("type") == "BPE" and (tokenizer_json.get("decoder") or {}).get("type") == "ByteLevel":
        pre_tokenizer(tokenizer_json)  # one we can name
        return "gpt2"
    raise UserError(f"GGUF export supports BPE tokenizers (byte-level or SentencePiece-style), not this "
                    f"{model.get('type')} tokenizer; use --format safetensors")


def permute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """transformers' rotate-half rows (each head: first halves, then second halves) -> llama.cpp's pairs."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for a byte-level BPE tokenizer's pre-tokenizer (how text is split before merges)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    byte_level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else {}
    if kinds == ["ByteLevel"] and byte_level.get("use_regex", True) and not byte_level.get("add_prefix_space"):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level.get("use_regex", True):
        return "smollm"  # SmolLM, StarCoder: single digits, then GPT-2's split
    if kinds == ["Split", "ByteLevel"] and not byte_level.get("use_regex", True):
        name = SPLIT_PRE.get((steps[0].get("pattern") or {}).get("Regex"))
        if name:
            return name
    raise UserError(f"GGUF export does not know this tokenizer's pre-tokenizer ({json.dumps(pre)[:120]}); it knows "
                    "GPT-2, SmolLM, Llama-3 and Qwen2 byte-level BPE and Llama/Mistral SentencePiece-style "
                    "tokenizers; use --format safetensors and llama.cpp's convert_hf_to_gguf.py")


def vocab_table(tokenizer, n_vocab: int, byte_tokens: bool = False) -> tuple[list[str], list]:
    """Every token id's text and llama.cpp token type: special added tokens are CONTROL, other added tokens
    USER_DEFINED, SentencePiece's <0xNN> byte pieces BYTE, ids the tokenizer never produces UNUSED padding."""
    import re

    import gguf

    reverse = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(token)
        if byte_tokens and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            types.append(gguf.TokenType.BYTE)
        elif i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def prepends_space(tokenizer_json: dict) -> bool:
    """llama.cpp's add_space_prefix for a SentencePiece-style tokenizer. llama.cpp puts a space before the text and
    after every special token, or nowhere. That is transformers' legacy behaviour (a Prepend('\u2581') normalizer,
    or Metaspace 'always'). Its current default, Metaspace 'first', prepends only at the very start of the input,
    so "nowhere" matches it on every chat prompt, which starts with a special token."""
    def steps(part: dict | None) -> list[dict]:
        part = part or {}
        return part.get("normalizers") or part.get("pretokenizers") or [part]

    for step in steps(tokenizer_json.get("normalizer")) + steps(tokenizer_json.get("pre_tokenizer")):
        if step.get("type") == "Prepend" and step.get("prepend") == "\u2581":
            return True
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") == "always"
    return False


def add_vocab(writer, tokenizer, folder: Path, n_vocab: int) -> None:
    """Tokens with their types, the tokenizer model, merges, special ids, add-BOS/EOS and the chat template."""
    import gguf

    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    if len(tokenizer) > n_vocab:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model's embedding only {n_vocab} rows; "
                        "resize the model's embeddings to the tokenizer before exporting")
    kind = tokenizer_kind(data)
    writer.add_tokenizer_model(kind)
    if kind == "llama":
        writer.add_tokenizer_pre("default")
        writer.add_add_space_prefix(prepends_space(data))
        tokens, types = vocab_table(tokenizer, n_vocab, byte_tokens=True)
        writer.add_token_list(tokens)
        # llama.cpp's SentencePiece tokenizer merges the pair whose merged piece scores highest; pieces are numbered
        # in merge order (as SentencePiece's own scores are, -id), so -id keeps transformers' merge priority.
        writer.add_token_scores([-float(i) if t == gguf.TokenType.NORMAL else 0.0 for i, t in enumerate(types)])
        writer.add_token_types(types)
        special = gguf.SpecialVocab(folder, load_merges=False, n_vocab=n_vocab)
    else:
        writer.add_tokenizer_pre(pre_tokenizer(data))
        tokens, types = vocab_table(tokenizer, n_vocab)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
    # What the tokenizer does, not what its config may say: Llama 3's adds BOS through a post-processor.
    ids = tokenizer("a")["input_ids"]
    special.add_special_token.update(bos=bool(ids) and ids[0] == tokenizer.bos_token_id,
                                     eos=bool(ids) and ids[-1] == tokenizer.eos_token_id)
    special.add_to_gguf(writer, quiet=True)


def rope_metadata(writer, config, head_dim: int) -> np.ndarray | None:
    """Rotary settings; for Llama 3.1's scaling, the per-frequency factors llama.cpp reads from rope_freqs."""
    import gguf

    params, kind = rope_settings(config)
    theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    writer.add_rope_freq_base(theta)
    writer.add_rope_dimension_count(head_dim)
    if kind == "default":
        return None
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
        return None
    if kind == "llama3":  # Meta's published formula: keep high frequencies, divide low ones by factor, blend between
        factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
        old = params["original_max_position_embeddings"]
        factors = []
        for freq in 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim):
            wavelen = 2 * math.pi / freq
            if wavelen < old / high:
                factors.append(1.0)
            elif wavelen > old / low:
                factors.append(factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        return np.array(factors, dtype=np.float32)
    raise UserError(f"GGUF export does not support rope scaling '{kind}' yet (it supports "
                    f"{', '.join(ROPE_TYPES)}); use --format safetensors")


def add_hparams(writer, config, name: str, file_type: str) -> np.ndarray | None:
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(getattr(gguf.LlamaFileType, file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return rope_metadata(writer, config, head_dim)


def tensors(model, arch, permute: bool):
    """(GGUF name, fp32 array maker) for each weight, in the state dict's order."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp uses token_embd when output.weight is absent
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise UserError(f"GGUF export cannot place tensor {name} of this {type(model).__name__}; "
                            "use --format safetensors")
        rows = heads if "q_proj" in name else kv_heads if "k_proj" in name else None

        def array(tensor=tensor, rows=rows):
            data = tensor.detach().float().cpu().numpy()
            return permute_rows(data, rows) if permute and rows else data

        yield target, tuple(tensor.shape), array


def tensor_type(shape: tuple[int, ...], quant: str):
    """Norms, biases and other 1-D tensors stay F32 (as llama.cpp's converter keeps them); Q8_0 needs rows of 32."""
    import gguf

    kind = getattr(gguf.GGMLQuantizationType, QUANTS[quant][0])
    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    if kind == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[kind][0]:
        return gguf.GGMLQuantizationType.F16
    return kind


def write_gguf(model, tokenizer, tokenizer_folder: Path, path: Path, quant: str, name: str) -> None:
    """Write ``model`` (fp32, merged) and its tokenizer (saved in ``tokenizer_folder``) to ``path``."""
    import gguf

    arch, permute = gguf_arch(model.config)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    rope_freqs = add_hparams(writer, model.config, name, QUANTS[quant][1])
    add_vocab(writer, tokenizer, tokenizer_folder, model.config.vocab_size)
    plan = list(tensors(model, arch, permute))
    if rope_freqs is not None:
        plan.insert(0, (gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope_freqs.shape,
                        lambda: rope_freqs))
    kinds = []
    for target, shape, _ in plan:
        kind = tensor_type(shape, quant)
        block, size = gguf.GGML_QUANT_SIZES[kind]
        writer.add_tensor_info(target, shape, np.dtype(np.float32), math.prod(shape) // block * size, raw_dtype=kind)
        kinds.append(kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for (target, _, array), kind in bar(list(zip(plan, kinds)), desc=f"Writing {path.name}", unit="tensor"):
        writer.write_tensor_data(gguf.quants.quantize(array(), kind))
    writer.close()
