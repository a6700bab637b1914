"""mean_reward: each entry's greedy replies scored by the rewards its GRPO or RLOO run trained with (or
--reward_funcs), and by a reward model."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..config import EvalConfig
from ..errors import UserError, first_line, warn
from ..methods import SAMPLING
from ..models.load import resolve_model
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
    """Each entry's rewards for mean_reward. With --reward_funcs on the eval command line: those, for every entry
    (one yardstick). Otherwise each GRPO or RLOO run's own functions, weights, reward model and answer format; the
    base and other runs get none. Code a run record names (a file or a module) is imported only with
    --trust_reward_code: a runs folder someone sent must not run their Python."""
    from ..train.rewards import BUILTINS, load_reward

    if cfg.reward_funcs:
        for name in cfg.reward_funcs:  # a bad name fails now, not after every entry has generated
            load_reward(name)
        shared = RewardSetup(list(cfg.reward_funcs), answer_format=cfg.answer_format, source="--reward_funcs")
        return {entry.name: shared for entry in entries}
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


@functools.lru_cache(maxsize=2)
def reward_model(model_id: str):
    """A reward model and its tokenizer, loaded once per evaluation (every GRPO run may name the same one), with
    TRL's padding fix: a tokenizer without a pad token pads with EOS."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = resolve_model(model_id)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model.to("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def reward_model_scores(model_id: str, prompts, replies: list[str], batch_size: int = 16) -> list[float]:
    """A sequence-classification reward model's score for each prompt + reply, as TRL's GRPOTrainer computes it:
    the conversation through the reward tokenizer's chat template, right-padded, the first logit."""
    tokenizer, model = reward_model(model_id)
    texts = [tokenizer.apply_chat_template(list(p) + [{"role": "assistant", "content": r}], tokenize=False)
             for p, r in zip(prompts, replies)]
    scores: list[float] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start: start + batch_size], return_tensors="pt", padding=True, padding_side="right",
                          add_special_tokens=False).to(model.device)
        scores += model(**batch).logits[:, 0].float().tolist()
    return scores
