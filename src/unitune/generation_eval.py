"""``--eval_generation N``: at each evaluation during training, greedy replies to N held-out prompts of the eval
split, scored into ``eval_task_accuracy`` (rows with an ``answer``) and, for GRPO, ``eval_mean_reward`` (the run's
reward functions and weights), logged beside ``eval_loss`` with the step in trainer_state.json."""

from __future__ import annotations

from transformers import TrainerCallback

from .answers import check_answer
from .generation import generate_replies
from .rewards import RewardLog, build_rewards, completion_text


class GenerationEval(TrainerCallback):
    """Scores greedy replies after each of the Trainer's evaluations. Every rank generates the same prompts (a
    sharded model needs them all in its collectives); the numbers land in the eval entry of the log history."""

    def __init__(self, prompts: list[list[dict]], rows: list[dict], answer_format: str, tokenizer,
                 max_new_tokens: int, batch_size: int, rewards: tuple[list[str], list[float] | None] | None = None):
        self.prompts, self.rows, self.answer_format = prompts, rows, answer_format
        self.tokenizer, self.max_new_tokens, self.batch_size = tokenizer, max_new_tokens, batch_size
        self.rewards = None
        if rewards is not None:
            names, weights = rewards
            funcs, _ = build_rewards(names, list(rows[0]), RewardLog(), answer_format)
            self.rewards = funcs, (weights or [])[: len(funcs)] or [1.0] * len(funcs)  # the model's weight is last

    def scores(self, replies: list[str]) -> dict[str, float]:
        out = {}
        if "answer" in self.rows[0]:
            out["eval_task_accuracy"] = sum(check_answer(reply, str(row["answer"]), self.answer_format)
                                            for row, reply in zip(self.rows, replies)) / len(replies)
        if self.rewards is not None:
            funcs, weights = self.rewards
            completions = [[{"role": "assistant", "content": r}] for r in replies]
            columns = {k: [row[k] for row in self.rows] for k in self.rows[0] if k != "prompt"}
            values = [list(f(prompts=self.prompts, completions=completions, **columns)) for f in funcs]
            out["eval_mean_reward"] = sum(w * float(v[i]) for w, v in zip(weights, values)
                                          for i in range(len(replies))) / len(replies)
        return out

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        training = model.training
        model.eval()
        try:
            replies = generate_replies(model, self.tokenizer, self.prompts, self.max_new_tokens, self.batch_size,
                                       desc="eval generation")
        finally:
            model.train(training)
        found = {key: round(value, 4) for key, value in self.scores(replies).items()}
        if metrics is not None:
            metrics.update(found)
        entry = next((e for e in reversed(state.log_history) if "eval_loss" in e and e.get("step") == state.global_step),
                     None)
        if entry is not None:
            entry.update(found)
        else:
            state.log_history.append({**found, "step": state.global_step, "epoch": state.epoch})


def generation_eval(cfg, dataset: str, tokenizer, batch_size: int) -> GenerationEval:
    """The callback for ``--eval_generation N``: the first N usable rows of ``--eval_split``, their answer format
    resolved and printed. GRPO also scores the run's reward functions (the reward model is left out: loading a
    second model at each evaluation costs more than it tells)."""
    from .data import prompt_messages
    from .errors import UserError
    from .normalize import load_rows, usable_rows
    from .rewards import answer_format_of

    ds = load_rows(dataset, cfg.eval_split, cfg.column_map)
    ds, fmt = usable_rows(ds.select(range(min(cfg.eval_generation, len(ds)))), None, f"split '{cfg.eval_split}'")
    if ds is None:
        raise UserError(f"--eval_generation: split '{cfg.eval_split}' has no prompts to generate for; choose "
                        "another --eval_split")
    rows = list(ds)
    grpo = cfg.method == "grpo" and (cfg.reward_funcs or not cfg.reward_model)
    if "answer" not in rows[0] and not grpo:
        raise UserError(f"--eval_generation scores replies against an 'answer' column, which split "
                        f"'{cfg.eval_split}' lacks (columns: {', '.join(rows[0])}); map one with --columns "
                        "answer=COLUMN, or drop --eval_generation")
    prompts = [prompt_messages(row, fmt) for row in rows]
    answer_format, why = answer_format_of(cfg.answer_format, [{"prompt": p, "answer": r.get("answer")}
                                                              for p, r in zip(prompts, rows)])
    print(f"unitune: eval generation: {len(rows)} prompts of '{cfg.eval_split}' at each evaluation, answers "
          f"checked as {answer_format} ({why})", flush=True)
    return GenerationEval(prompts, rows, answer_format, tokenizer, cfg.max_completion_length, batch_size,
                          (cfg.reward_funcs, cfg.reward_weights) if grpo else None)
