"""unitune.answers.check_answer on hand-written rows in each format: every right reply accepted, every wrong
one rejected (the evaluator's task_accuracy and the GRPO accuracy reward both use it)."""

import pytest

from unitune.answers import check_answer, format_score, resolve_format
from unitune.train import rewards

GSM8K_REFERENCE = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                   "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
MATH_REFERENCE = r"The area is $\pi r^2 = \boxed{\frac{1}{2}}$."

# (reference, format, reply, right?)
CASES = [
    # tagged: the demo's "Answer: <value>" line
    ("42", "tagged", "6 * 7 = 42.\nAnswer: 42", True),
    ("42", "tagged", "Answer: **42.0**", True),
    ("1000", "tagged", "Answer: 1,000", True),
    ("RIVER", "tagged", "Answer: RIVER", True),
    ("g", "tagged", "answer: G", True),
    ("42", "tagged", "The answer is 42", False),  # the requested format is part of the task
    ("42", "tagged", "Answer: 41", False),
    ("42", "tagged", "Answer: 42\nAnswer: 43", False),  # the last answer line counts
    ("RIVER", "tagged", "Answer: river", False),  # capitals were asked for
    ("cab", "tagged", "Answer: abc", False),  # words are never algebra (c*a*b = a*b*c)
    ("cab.", "tagged", "Answer: abc", False),  # not even with a period on the reference
    ("B", "tagged", "Answer: (B)", True),  # a multiple-choice letter in parentheses
    # gsm8k: "#### <value>" in the reference; the reply's #### line, else its last number
    (GSM8K_REFERENCE, "gsm8k", "48 / 2 = 24, and 48 + 24 = 72.\n#### 72", True),
    (GSM8K_REFERENCE, "gsm8k", "She sold 24 in May, so 72 clips in total.", True),
    (GSM8K_REFERENCE, "gsm8k", "In total 72.00", True),
    ("#### 1,000", "gsm8k", "The total is 1000.", True),
    (GSM8K_REFERENCE, "gsm8k", "She sold 72 clips? No: 48 + 24 = 70", False),
    (GSM8K_REFERENCE, "gsm8k", "#### 71\nThough I counted 72.", False),  # the #### line wins over the last number
    (GSM8K_REFERENCE, "gsm8k", "I do not know.", False),
    # boxed: MATH-style, equal values by math-verify
    (MATH_REFERENCE, "boxed", r"So the answer is $\boxed{0.5}$.", True),
    (MATH_REFERENCE, "boxed", r"$\boxed{1/2}$", True),
    (r"\boxed{x + 1}", "boxed", r"\boxed{1+x}", True),
    (r"\boxed{\sqrt{2}}", "boxed", r"\boxed{2^{1/2}}", True),
    (r"\boxed{\{1, 2\}}", "boxed", r"\boxed{\{2, 1\}}", True),  # nested braces read whole
    (MATH_REFERENCE, "boxed", r"$\boxed{\frac{1}{3}}$", False),
    (MATH_REFERENCE, "boxed", "The answer is 0.5", False),  # no box
    (MATH_REFERENCE, "boxed", r"$\boxed{\frac{1}{2}$", False),  # an unclosed box is no answer
    (r"\boxed{x + 1}", "boxed", r"\boxed{x - 1}", False),
    # last_number
    ("42", "last_number", "First 40, then 42", True),
    ("0.5", "last_number", "It is 1/2", True),
    ("42", "last_number", "42, or rather 43", False),
    ("23", "last_number", "the roots are 2,3", False),  # a comma joins thousands only
    ("1000000", "last_number", "one million: 1,000,000", True),
    ("42 apples", "last_number", "42", True),  # a reference with words: its last number
    # exact
    ("Paris", "exact", "  Paris\n", True),
    ("Paris", "exact", "paris", False),
    ("Paris", "exact", "It is Paris", False),
]


@pytest.mark.parametrize("reference,answer_format,reply,right", CASES)
def test_check_answer_in_each_format(reference, answer_format, reply, right):
    assert check_answer(reply, reference, answer_format) is right


AUTO_CASES = [
    (GSM8K_REFERENCE, "so 72.", True),
    (GSM8K_REFERENCE, "so 27.", False),
    (MATH_REFERENCE, r"\boxed{0.50}", True),
    (MATH_REFERENCE, "0.5", False),  # boxed reference: the reply must box it
    ("Answer: 7", "x\nAnswer: 7.0", True),
    ("Answer: 7", "7", False),
    ("42", "Answer: 42", True),  # bare values: tagged, boxed or ####, else the last number
    ("42", r"\boxed{42}", True),
    ("42", "#### 42", True),
    ("42", "six times seven is 42", True),
    ("42", "six times seven is 41", False),
]


@pytest.mark.parametrize("reference,reply,right", AUTO_CASES)
def test_auto_takes_the_format_from_the_reference(reference, reply, right):
    assert check_answer(reply, reference) is right


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown answer format 'latex'"):
        check_answer("1", "1", "latex")


def test_a_dataset_format_comes_from_its_answers_then_its_prompts():
    assert resolve_format("auto", [GSM8K_REFERENCE] * 3 + ["5"], ["q"] * 4)[0] == "gsm8k"
    assert resolve_format("auto", [MATH_REFERENCE] * 2, ["q"] * 2)[0] == "boxed"
    asks = "What is 2 + 2? Your last line must be 'Answer: ' followed by the result."
    assert resolve_format("auto", ["4", "5"], [asks, asks]) == ("tagged", "2 of 2 prompts ask for that format")
    assert resolve_format("auto", ["4"], [r"Put the result in \boxed{}."])[0] == "boxed"
    assert resolve_format("auto", ["4"], ["What is 2 + 2?"])[0] == "auto"
    assert resolve_format("gsm8k", ["4"], ["What is 2 + 2?"]) == ("gsm8k", "--answer_format")


@pytest.mark.parametrize("answer_format,full,partial,none", [
    ("tagged", "x = 1.\nAnswer: 1", "Answer: 1\nmore text", "the answer is 1"),
    ("gsm8k", "1 + 1 = 2\n#### 2", "#### 2\nmore text", "it is 2"),
    ("boxed", r"so $\boxed{2}$.", r"\boxed{1} or \boxed{2}", "it is 2"),
])
def test_format_score(answer_format, full, partial, none):
    assert [format_score(r, answer_format) for r in (full, partial, none)] == [1.0, 0.5, 0.0]


def test_grpo_accuracy_reward_reads_the_runs_answer_format():
    """The reward GRPO trains on scores GSM8K- and MATH-style data right, not 0 for want of an Answer: line."""
    log = rewards.RewardLog()
    for answer_format, reference, right, wrong in [
            ("gsm8k", GSM8K_REFERENCE, "24 + 48 = 72\n#### 72", "#### 70"),
            ("boxed", MATH_REFERENCE, r"\boxed{0.5}", r"\boxed{2}")]:
        funcs, _ = rewards.build_rewards(["accuracy", "format"], ["prompt", "answer"], log, answer_format)
        completions = [[{"role": "assistant", "content": text}] for text in (right, wrong)]
        scores = [f(prompts=["q", "q"], completions=completions, answer=[reference] * 2) for f in funcs]
        assert scores == [[1.0, 0.0], [1.0, 1.0]], (answer_format, scores)


def test_answer_format_of_a_dataset_reads_message_prompts():
    rows = [{"prompt": [{"role": "user", "content": "2 + 2? End with 'Answer: <value>'."}], "answer": "4"}] * 3
    assert rewards.answer_format_of("auto", rows)[0] == "tagged"
    assert rewards.answer_format_of("auto", [{"prompt": "q", "answer": "#### 4"}])[0] == "gsm8k"
