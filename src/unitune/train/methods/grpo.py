"""GRPO: TRL GRPOTrainer with unitune's reward functions (train/rewards.py). RLOO (rloo.py) shares its rewards, its
sampling and its CPU speed-ups, from here.

Reward mean/std per step go to trainer_state.json through TRL's logs ("reward", "reward_std",
"rewards/<name>/mean"); a few sampled completions with their rewards go to completions.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import trl
from transformers import TrainerCallback
from trl import GRPOConfig

from ...errors import UserError
from ...fast import shared_prompts
from ...fast.lora_merge import lora_merged
from ...fast.packed_linear import packed_linears
from ...fast.prefill import shared_prefill
from ...machine import world_size
from ...models.load import lora_config
from ..rewards import ANSWER_FORMATTED, RewardLog, answer_format_of, build_rewards
from ...tools import run_tools
from ..trained import reward_classifier

COMPLETIONS_FILE = "completions.jsonl"


def num_generations(cfg, world_size: int) -> int:
    """--num_generations, default 4 on CPU and 8 on GPU; it must divide the generation batch."""
    n = cfg.num_generations or (8 if torch.cuda.is_available() else 4)
    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size
    if n < 2 or batch % n:
        works = [d for d in range(2, batch + 1) if batch % d == 0]
        raise UserError(f"--num_generations {n} does not divide the generation batch of {batch} prompts "
                        f"(per_device_train_batch_size x gradient_accumulation_steps x processes); use one of "
                        f"{', '.join(map(str, works)) or 'none: raise the batch size to at least 2'}")
    return n


class FastSampling:
    """CPU speed-ups for TRL's GRPO and RLOO trainers (whose sampling and log-prob passes are the same code), each
    measured in bench/ (RESULTS.md): they sample through merged LoRA weights (fast.lora_merge), packed for decode
    steps where that measured faster (fast.packed_linear), and prefill each prompt once (fast.prefill); their
    log-prob passes compute each prompt once for its group of completions (shared_prompts). Elsewhere, and for inputs
    these do not cover, TRL's own code runs."""

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal):
        packing = (self.args.use_cpu and not compute_aux_loss and all(v is None for v in multimodal.values())
                   and shared_prompts.usable(model, input_ids, attention_mask, logits_to_keep))
        if not packing:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **multimodal)
        with self.accelerator.autocast():
            logps, entropy = shared_prompts.per_token_logps(model, packing, input_ids, logits_to_keep,
                                                            self._tokenizer.pad_token_id)
        return logps, entropy if compute_entropy else None, None

    def _generate_single_turn(self, *args, **kwargs):
        if not self.args.use_cpu:
            return super()._generate_single_turn(*args, **kwargs)
        with lora_merged(self.model), packed_linears(self.model), shared_prefill(self.model):
            return super()._generate_single_turn(*args, **kwargs)


class GRPOTrainer(FastSampling, trl.GRPOTrainer):
    pass


class _SaveCompletions(TrainerCallback):
    def __init__(self, log: RewardLog):
        self.log = log

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            with open(Path(args.output_dir) / COMPLETIONS_FILE, "w", encoding="utf-8") as handle:
                for row in self.log.rows():
                    handle.write(json.dumps(row) + "\n")


def sampling_setup(cfg, train_ds, args: dict, environment: type | None = None) -> tuple[dict, dict]:
    """What GRPO and RLOO share: (the config fields of their sampling, their trainer's rewards, reward tokenizers and
    the callbacks that keep a few completions). Says which rewards score the completions. A reward model is loaded
    here (train.trained.reward_classifier): a unitune RM run as it trained, with its own tokenizer and template. An
    --environment's get_reward() is one more reward, which TRL adds itself."""
    log = RewardLog()
    answer_format, because = answer_format_of(cfg.answer_format, train_ds)
    scored = hasattr(environment, "get_reward")
    funcs, why = ([], "") if (cfg.reward_model or scored) and not cfg.reward_funcs else build_rewards(
        cfg.reward_funcs, train_ds.column_names, log, answer_format)
    tokenizers = [None] * len(funcs)
    if cfg.reward_model:
        scorer, scorer_tokenizer = reward_classifier(cfg.reward_model)
        funcs.append(scorer)
        tokenizers.append(scorer_tokenizer)
        why = ", ".join(filter(None, [why, f"reward model {cfg.reward_model}"]))
    if scored:
        why = ", ".join(filter(None, [why, f"{environment.__name__}.get_reward"]))
    if cfg.reward_weights and len(cfg.reward_weights) != len(funcs):
        raise UserError(f"--reward_weights has {len(cfg.reward_weights)} values but the rewards are {why}; give "
                        f"{len(funcs)} weights, one per reward" + (" (the environment's weighs 1)" if scored else ""))
    print(f"unitune: {cfg.method.upper()} rewards: {why}", flush=True)
    if any(getattr(f, "__name__", "") in ANSWER_FORMATTED for f in funcs):
        print(f"unitune: answers checked as {answer_format} ({because})", flush=True)
    sampling = args | {  # TRL logs the sampled token count itself ("num_tokens")
        "include_num_input_tokens_seen": "no", "beta": cfg.beta, "num_generations": num_generations(cfg, world_size()),
        "max_completion_length": cfg.max_completion_length, "temperature": cfg.temperature,
        "reward_weights": cfg.reward_weights}
    return sampling, {"reward_funcs": funcs, "reward_processing_classes": tokenizers,
                      "callbacks": [_SaveCompletions(log)]}


def build(cfg, model, tokenizer, train_ds, eval_ds, args):
    tools = run_tools(cfg, tokenizer, cfg.model_name or "the embedded model")
    sampling, rewards = sampling_setup(cfg, train_ds, args, tools.get("environment_factory"))
    config = GRPOConfig(**sampling, importance_sampling_level=cfg.importance_sampling_level,
                        **({"loss_type": cfg.loss_type} if cfg.loss_type else {}),
                        **({"max_tool_calling_iterations": cfg.max_tool_calling_iterations} if tools else {}))
    return GRPOTrainer(model=model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                       processing_class=tokenizer, **rewards, **tools,
                       peft_config=lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
