"""``--eval_generation N``: at each evaluation during training, greedy replies to N held-out prompts of the eval
split, scored into ``eval_task_accuracy`` (rows with an ``answer``) and, for GRPO and RLOO, ``eval_mean_reward``
(the run's reward functions and weights), logged with the evaluation's step in trainer_state.json and to the
trackers."""

from __future__ import annotations

from transformers import TrainerCallback

from ..answers import check_answer
from ..fast.generation import generate_replies
from ..methods import SAMPLING
from .rewards import RewardLog, build_rewards, reward_columns, weighted_mean


class GenerationEval(TrainerCallback):
    """Scores greedy replies after each of the Trainer's evaluations and logs them through the Trainer (so the
    trackers get them too), as their own entry with the evaluation's step. Every rank generates the same prompts
    (a sharded model needs them all in its collectives); rank 0 shows the bar."""

    def __init__(self, prompts: list[list[dict]], rows: list[dict], answer_format: str, tokenizer,
                 max_new_tokens: int, batch_size: int, rewards: tuple[list, list[float] | None] | None = None):
        self.prompts, self.rows, self.answer_format = prompts, rows, answer_format
        self.tokenizer, self.max_new_tokens, self.batch_size = tokenizer, max_new_tokens, batch_size
        self.log = None  # the Trainer's log method, set by attach()
        self.rewards = None
        if rewards is not None:
            funcs, weights = rewards
            self.rewards = funcs, (weights or [])[: len(funcs)] or [1.0] * len(funcs)  # the model's weight is last

    def attach(self, trainer) -> None:
        self.log = trainer.log
        trainer.add_callback(self)

    def scores(self, replies: list[str]) -> dict[str, float]:
        out = {}
        if "answer" in self.rows[0]:
            out["eval_task_accuracy"] = sum(check_answer(reply, str(row["answer"]), self.answer_format)
                                            for row, reply in zip(self.rows, replies)) / len(replies)
        if self.rewards is not None:
            funcs, weights = self.rewards
            out["eval_mean_reward"] = weighted_mean(reward_columns(funcs, self.prompts, replies, self.rows), weights)
        return out

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        training = model.training
        model.eval()
        try:
            replies = generate_replies(model, self.tokenizer, self.prompts, self.max_new_tokens, self.batch_size,
                                       desc="eval generation" if state.is_world_process_zero else None)
        finally:
            model.train(training)
        found = {key: round(value, 4) for key, value in self.scores(replies).items()}
        if metrics is not None:
            metrics.update(found)
        self.log(found)


def generation_eval(cfg, dataset: str, tokenizer, batch_size: int) -> GenerationEval:
    """The callback for ``--eval_generation N``: the first N rows of ``--eval_split`` (the unusable ones dropped),
    their answer format resolved and printed. GRPO and RLOO also score the run's reward functions (the reward model
    is left out: loading a second model at each evaluation costs more than it tells)."""
    from ..data.pipeline import DataSettings, prepare
    from ..data.views import prompt_messages
    from ..errors import UserError
    from ..machine import is_main_process
    from .rewards import answer_format_of

    prepared = prepare(dataset, cfg.eval_split, None, DataSettings(cfg.column_map, cfg.eval_generation), required=False)
    ds, fmt = prepared.rows, prepared.format
    if ds is None or len(ds) == 0:
        raise UserError(f"--eval_generation: split '{cfg.eval_split}' has no prompts to generate for; choose "
                        "another --eval_split")
    rows = list(ds)
    rewarded = cfg.method in SAMPLING and (cfg.reward_funcs or not cfg.reward_model)
    if "answer" not in rows[0] and not rewarded:
        raise UserError(f"--eval_generation scores replies against an 'answer' column, which split "
                        f"'{cfg.eval_split}' lacks (columns: {', '.join(rows[0])}); map one with --columns "
                        "answer=COLUMN, or drop --eval_generation")
    prompts = [prompt_messages(row, fmt) for row in rows]
    answer_format, why = answer_format_of(cfg.answer_format, [{"prompt": p, "answer": r.get("answer")}
                                                              for p, r in zip(prompts, rows)])
    rewards = None
    if rewarded:
        try:
            rewards = build_rewards(cfg.reward_funcs, list(rows[0]), RewardLog(), answer_format)[0], \
                cfg.reward_weights
        except UserError as err:
            raise UserError(f"--eval_generation on split '{cfg.eval_split}': {err}") from None
    if is_main_process():
        print(f"unitune: eval generation: {len(rows)} prompts of '{cfg.eval_split}' at each evaluation, answers "
              f"checked as {answer_format} ({why})", flush=True)
    return GenerationEval(prompts, rows, answer_format, tokenizer, cfg.max_completion_length, batch_size, rewards)
