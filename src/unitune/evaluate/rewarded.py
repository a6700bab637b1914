"""mean_reward: each entry's greedy replies scored by the rewards its GRPO or RLOO run trained with (or
--reward_funcs), and by a reward model."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import torch

from ..config import EvalConfig
from ..errors import UserError, first_line, warn
from ..methods import SAMPLING, is_reward_model
from .entries import Entry
from .heldout import EvalData


@dataclass
class RewardSetup:
    """The rewards behind one entry's mean_reward, as its GRPO or RLOO run trained with them (or --reward_funcs)."""

    names: list[str]  # []: the defaults for the data, as in training
    weights: list[float] | None = None  # one per function, then one for the model; None: all 1
    model: str | None = None  # a sequence-classification reward model
    answer_format: str = "auto"
    source: str = "the run's own"
    withheld: str | None = None  # why mean_reward is not computed

    def label(self, names: list[str]) -> str:
        parts = [n.rsplit(":", 1)[-1] for n in names] + ([f"reward model {self.model}"] if self.model else [])
        weights = f", weights {', '.join(f'{w:g}' for w in self.weights)}" if self.weights else ""
        return f"{' + '.join(parts)} ({self.source}{weights})"


def reward_setups(entries: list[Entry], cfg: EvalConfig) -> dict[str, RewardSetup]:
    """Each entry's rewards for mean_reward. With --reward_funcs or --reward_model on the eval command line: those, for
    every entry that writes replies (one yardstick). Otherwise each GRPO or RLOO run's own functions, weights, reward
    model and answer format; the base and other runs get none. Code a run record names (a file or a module) is
    imported only with --trust_reward_code: a runs folder someone sent must not run their Python."""
    from ..train.rewards import BUILTINS, load_reward

    if cfg.reward_funcs or cfg.reward_model:
        for name in cfg.reward_funcs or []:  # a bad name fails now, not after every entry has generated
            load_reward(name)
        if cfg.reward_model:  # so does a bad reward model (loaded once: reward_model keeps it)
            reward_model(cfg.reward_model)
        shared = RewardSetup(list(cfg.reward_funcs or []), model=cfg.reward_model, answer_format=cfg.answer_format,
                             source=" and ".join(f for f, v in (("--reward_funcs", cfg.reward_funcs),
                                                                ("--reward_model", cfg.reward_model)) if v))
        return {entry.name: shared for entry in entries if not is_reward_model(entry.method)}
    setups = {}
    for entry in entries:
        if entry.method not in SAMPLING:
            continue
        settings = entry.record.get("settings") or {}
        setup = RewardSetup(list(settings.get("reward_funcs") or []), settings.get("reward_weights"),
                            settings.get("reward_model"), settings.get("answer_format") or "auto")
        code = [n for n in setup.names if n not in BUILTINS]
        if code and not cfg.trust_reward_code:
            setup.withheld = (f"not computed: run {entry.name} names reward code ({', '.join(code)}), which runs "
                              "only with --trust_reward_code")
            warn(f"mean_reward {setup.withheld}")
        setups[entry.name] = setup
    return setups


def rewarded_metrics(setup: RewardSetup, data: EvalData, prompts, replies: list[str], rows: list[dict]) -> dict:
    """mean_reward and which rewards made it; a reward that fails leaves it null with the reason (the entry's
    other metrics stand)."""
    from ..train.rewards import RewardLog, build_rewards, default_rewards

    if setup.withheld:
        return {"mean_reward": None, "mean_reward_note": setup.withheld}
    names = setup.names
    try:
        names = names or ([] if setup.model else default_rewards(list(rows[0]))[0])
        answer_format = data.answer_format(setup.answer_format, prompts)
        funcs = build_rewards(names, list(rows[0]), RewardLog(), answer_format)[0] if names else []
        value = mean_reward(funcs, setup, prompts, replies, rows)
    except Exception as err:  # guarded like training: one line naming the function, never a lost entry
        why = f"not computed: {first_line(err, typed=not isinstance(err, UserError))}"
        warn(f"mean_reward {why}")
        return {"mean_reward": None, "mean_reward_note": why, "mean_reward_funcs": setup.label(names)}
    return {"mean_reward": value, "mean_reward_funcs": setup.label(names)}


def mean_reward(funcs, setup: RewardSetup, prompts, replies: list[str], rows: list[dict]) -> float:
    """Mean over replies of the weighted sum of the reward functions (and the reward model), as GRPO sums them."""
    from ..train.rewards import reward_columns, weighted_mean

    scores = reward_columns(funcs, prompts, replies, rows)
    if setup.model:
        scores.append(reward_model_scores(setup.model, prompts, replies))
    return weighted_mean(scores, setup.weights)


def reward_model(model_id: str):
    """A reward model and its tokenizer (train.trained.reward_classifier: a unitune RM run, a Hub id or a folder),
    loaded once while its files stay the same (every GRPO run may name the same one; an RM run trained again in
    place, as the web UI may, is loaded again)."""
    from .cache import fingerprint

    return _loaded_reward_model(model_id, json.dumps(fingerprint(model_id), default=str))


@functools.lru_cache(maxsize=2)
def _loaded_reward_model(model_id: str, files: str):
    from ..train.trained import reward_classifier

    model, tokenizer = reward_classifier(model_id)
    return tokenizer, model.to("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def reward_model_scores(model_id: str, prompts, replies: list, batch_size: int = 16) -> list[float]:
    """A sequence-classification reward model's score for each prompt + reply, as TRL's GRPOTrainer computes it:
    the conversation through the reward tokenizer's chat template, right-padded, the first logit. A reply is a
    string or its messages (system turns folded where the template wants, as training folds them); a plain-text
    prompt is followed by its reply and the EOS, as TRL's reward trainer has it."""
    from ..templates import chat_format

    tokenizer, model = reward_model(model_id)
    plain = bool(prompts) and isinstance(prompts[0], str)
    prepare = chat_format(tokenizer).prepare if not plain and tokenizer.chat_template else list
    texts = [p + r + tokenizer.eos_token if plain else tokenizer.apply_chat_template(
        prepare(list(p) + (list(r) if isinstance(r, list) else [{"role": "assistant", "content": r}])),
        tokenize=False) for p, r in zip(prompts, replies)]
    scores: list[float] = []
    for start in range(0, len(texts), batch_size):  # plain text with the special tokens TRL's reward trainer adds
        batch = tokenizer(texts[start: start + batch_size], return_tensors="pt", padding=True, padding_side="right",
                          add_special_tokens=plain).to(model.device)
        scores += model(**batch).logits[:, 0].float().tolist()
    return scores


def reward_model_metrics(run: str, pairs: list[tuple], batch_size: int) -> dict:
    """A reward model run on the test pairs: reward_accuracy (the chosen reply scored above the rejected one) and
    reward_margin (the mean of chosen minus rejected)."""
    if not pairs:
        return {"reward_accuracy": None, "reward_margin": None}
    prompts = [p for p, _, _ in pairs]
    chosen = reward_model_scores(run, prompts, [c for _, c, _ in pairs], batch_size)
    rejected = reward_model_scores(run, prompts, [r for _, _, r in pairs], batch_size)
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"reward_accuracy": sum(m > 0 for m in margins) / len(margins), "reward_margin": sum(margins) / len(margins),
            "reward_pairs": len(margins)}
