"""`unitune chat`: talk to a model in the terminal, replies streamed as they are generated.

    unitune chat --run runs/demo/sft_smollm2-135m-instruct              # the run (its adapter merged)
    unitune chat --run runs/demo/sft_smollm2-135m-instruct --compare base
    printf 'What is 7*6?\\n/reset\\nName a color.\\n' | unitune chat --run exported/sft/model-f16.gguf

Commands: /reset (forget the conversation), /system TEXT (set the system prompt and reset), /quit. From a pipe
it reads one prompt (or command) per line and prints the replies in order (a reply may span lines), so it
scripts and tests.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ChatConfig
from ..errors import UserError

HELP = "/reset forgets the conversation, /system TEXT sets the system prompt, /quit ends (or Ctrl-D)"


@dataclass
class Speaker:
    """One model in the chat, with its own conversation."""

    label: str
    model: object
    tokenizer: object
    history: list[dict] = field(default_factory=list)


def base_of(run: str | None) -> str | None:
    """The base model behind --run: a run's, or the one recorded by the merge or export that made a model."""
    import json

    from .export import EXPORT_FILE
    from .merge import MERGE_FILE, run_base

    if run is None:
        raise UserError("--compare base needs --run: without it the chat is already with the embedded base model")
    if is_run(run):
        return run_base(Path(run))
    folder = Path(run).parent if run.endswith(".gguf") else Path(run)
    for record in (folder / MERGE_FILE, folder / EXPORT_FILE):
        if record.exists():
            return json.loads(record.read_text()).get("base_model")
    raise UserError(f"--compare base needs --run to be a run folder, or a merge or export made by unitune; "
                    f"{run} records no base model: pass the base model itself to --compare")


def load_speaker(source: str | None) -> Speaker:
    """A run folder (adapter merged, into the 4-bit base for QLoRA), a model folder, a .gguf file, a Hub id, or
    None (the embedded model)."""
    from transformers import AutoModelForCausalLM

    from ..models.load import load_tokenizer, resolve_model
    from ..train.trained import refuse_reward_model
    from .merge import merge_adapter

    print(f"unitune chat: loading {source or 'the embedded model'}", file=sys.stderr, flush=True)
    if source and is_run(source):
        refuse_reward_model(Path(source), "chat")
        merged = merge_adapter(Path(source))
        speaker = Speaker(Path(source).name, merged.model, merged.tokenizer)
    else:
        path = resolve_model(source)
        tokenizer = load_tokenizer(path)  # first: a bad Hub id or folder is its one-line error, not a traceback
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        speaker = Speaker(Path(source).name if source else "base", model, tokenizer)
    if not speaker.tokenizer.chat_template:
        raise UserError(f"{source} has no chat template, so it cannot be chatted with; use an instruct (chat) "
                        "model, or a run trained from one")
    return speaker


def is_run(source: str) -> bool:
    return (Path(source) / "adapter_config.json").exists()


def reply(speaker: Speaker, prompt: str, system: str | None, cfg: ChatConfig, out) -> str:
    """Stream one reply to ``out`` and return it; the turn is added to the speaker's conversation."""
    from transformers import TextStreamer

    from ..templates import chat_format

    chat = chat_format(speaker.tokenizer)
    messages = ([{"role": "system", "content": system}] if system else []) + speaker.history + \
        [{"role": "user", "content": prompt}]
    text = chat.generation_prompt(messages)
    inputs = speaker.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    streamer = TextStreamer(speaker.tokenizer, skip_prompt=True, skip_special_tokens=True)
    streamer.on_finalized_text = lambda piece, stream_end=False: print(piece, end="" if not stream_end else "",
                                                                       file=out, flush=True)
    sampling = ({"do_sample": True, "temperature": cfg.temperature} if cfg.temperature > 0 else
                {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
    with torch.inference_mode():
        output = speaker.model.generate(**inputs, max_new_tokens=cfg.max_new_tokens, streamer=streamer,
                                        eos_token_id=chat.stop_ids(speaker.model.generation_config),
                                        pad_token_id=speaker.tokenizer.pad_token_id, **sampling)
    answer = speaker.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    speaker.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return answer


def prompts(interactive: bool):
    """Lines typed (with a prompt) or piped; ends at EOF."""
    while True:
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except EOFError:
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt ends the chat, as Ctrl-D does
            print(flush=True)
            return
        if not interactive and not line:
            return
        yield line.strip()


def run_chat(cfg: ChatConfig) -> None:
    compare = base_of(cfg.run) if cfg.compare == "base" else cfg.compare
    speakers = [load_speaker(cfg.run)]
    if cfg.compare:
        speakers.append(load_speaker(compare))
        if cfg.compare == "base":
            speakers[1].label = "base"
        elif speakers[0].label == speakers[1].label:  # two exports' model-f16.gguf: name them by their folders
            for speaker, source in zip(speakers, (cfg.run, cfg.compare)):
                speaker.label = "/".join(Path(source).parts[-2:])
    interactive = sys.stdin.isatty()
    labelled = len(speakers) > 1 or interactive
    system = cfg.system
    if interactive:
        print(f"unitune chat: {' vs '.join(s.label for s in speakers)}; {HELP}", flush=True)
    for line in prompts(interactive):
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset" or line.startswith("/system"):
            if line.startswith("/system"):
                system = line.removeprefix("/system").strip() or None
            for speaker in speakers:
                speaker.history.clear()
            if interactive:
                print(f"(conversation reset{'; system: ' + system if system else ''})", flush=True)
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {HELP}", file=sys.stderr, flush=True)
            continue
        for speaker in speakers:
            if labelled:
                print(f"{speaker.label}> ", end="", flush=True)
            try:
                reply(speaker, line, system, cfg, sys.stdout)
            except KeyboardInterrupt:  # Ctrl-C stops this prompt's replies, not the chat
                print(" (stopped)", flush=True)
                break
            print(flush=True)
