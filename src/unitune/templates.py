"""Render conversations with the chat template and find the trained spans.

The one place SFT, the preference methods, GRPO prompts, `unitune check` and the evaluator turn messages into text:
the tokens the evaluator scores as a reply are the tokens SFT trains.

How a reply's span is found, per template (`ChatFormat.how`):
- **markers**: the template marks assistant output with `{% generation %}` (the model repo's own, or a user's
  `--chat_template FILE`);
- **TRL training template**: TRL ships generation-tagged, prefix-preserving twins of the templates of the families
  people fine-tune most (Qwen3, Llama-3, Gemma, Phi-3, DeepSeek, GLM, ...); rows are rendered with the twin
  (`trl.chat_template_utils.get_training_chat_template`);
- **turn by turn**: other templates are rendered one assistant turn at a time; the span is what the turn adds after
  the generation prompt, up to where the full render and the partial one part.

Every row is then checked against its messages: each reply's text lies inside its span, no other message's text
does, and the span ends on the end-of-turn token (what the model must learn to stop). A row that fails stops
training with one line; a guessed mask is never used.
"""

from __future__ import annotations

import collections
import functools
import json
from dataclasses import dataclass

from jinja2 import TemplateError

from .errors import UserError, warn
from .masks import FIX, check_spans, common_prefix, span_mask, token_spans
from .messages import clean_message
from .tokens import token_ids

RENDERS_KEPT = 64  # a row's renders (prefixes of a few turns, both sides of a pair), not a split's


def eos_ids(tokenizer, generation_config=None) -> set[int]:
    """The tokenizer's EOS id and the generation config's (one id or a list)."""
    configured = getattr(generation_config, "eos_token_id", None)  # None: no config given
    ids = {tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])}
    return {i for i in ids if i is not None}


def fold_system(messages: list[dict]) -> list[dict]:
    """A leading system message merged into the first user turn (for templates that reject system turns)."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], list(messages[1:])
    if rest and rest[0]["role"] == "user":
        return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
    return [{"role": "user", "content": system}, *rest]


@dataclass(frozen=True)
class ChatFormat:
    """How one tokenizer's chat template is rendered for training, scoring and generation."""

    tokenizer: object
    template: str  # what training rows are rendered with (the TRL twin when one exists)
    how: str  # "markers", "trl", "turns": see the module docstring
    folds_system: bool  # the template rejects system turns: they are folded into the first user turn

    @property
    def description(self) -> str:
        return {"markers": "the template's {% generation %} markers",
                "trl": "TRL's generation-tagged training twin of this template",
                "turns": "rendered turn by turn, checked per row"}[self.how]

    def prepare(self, messages: list[dict]) -> list[dict]:
        messages = [clean_message(m) for m in messages]
        return fold_system(messages) if self.folds_system else messages

    def render(self, messages: list[dict], generation_prompt: bool = False, template: str | None = None,
               tools: list[dict] | None = None) -> str:
        """The messages rendered, with the row's ``tools`` (JSON schemas) where it has them. The last RENDERS_KEPT
        renders are kept: a row's spans, checks and lengths render the same prefixes (a pair's prompt twice), and
        Jinja is the data path's largest cost. The key is the whole of each message (tool calls, names and any other
        key a template reads) and the tools, never only the roles and contents."""
        prepared, template = self.prepare(messages), template or self.template
        try:  # the key only: the template renders the objects as given (a tool list's keys in their own order)
            key = (json.dumps([prepared, tools], sort_keys=True, ensure_ascii=False), generation_prompt, template)
        except (TypeError, ValueError):  # content that is not JSON (an image in a multimodal message): not kept
            return self._apply(prepared, generation_prompt, template, tools)
        if key not in self._renders:
            self._renders[key] = self._apply(prepared, generation_prompt, template, tools)
            if len(self._renders) > RENDERS_KEPT:
                self._renders.popitem(last=False)
        return self._renders[key]

    @functools.cached_property
    def _renders(self) -> collections.OrderedDict:
        return collections.OrderedDict()

    def _apply(self, messages: list[dict], generation_prompt: bool, template: str, tools: list[dict] | None = None) \
            -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        try:  # what apply_chat_template(tokenize=False) renders, less its copying of messages prepare() made plain
            rendered, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=template,
                                                add_generation_prompt=generation_prompt,
                                                **self.tokenizer.special_tokens_map)
            return rendered[0]
        except TemplateError as err:
            raise UserError(f"the chat template rejected a row ({err}); fix the row's roles "
                            "(user and assistant turns alternating) or " + FIX) from None

    def generation_prompt(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """The prompt as the model sees it at inference: the tokenizer's own template, generation prompt added."""
        return self.render(messages, generation_prompt=True, template=self.tokenizer.chat_template, tools=tools)

    def _marked_spans(self, messages: list[dict], tools: list[dict] | None) -> tuple[str, list[tuple[int, int]]]:
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            rendered, spans = render_jinja_template(conversations=[self.prepare(messages)], tools=tools,
                                                    chat_template=self.template, return_assistant_tokens_mask=True,
                                                    **self.tokenizer.special_tokens_map)
        except TemplateError as err:
            raise UserError(f"the chat template rejected a row ({err}); fix the row's roles or " + FIX) from None
        merged: list[tuple[int, int]] = []
        for start, end in spans[0]:  # a template may mark a turn in pieces (Phi-3: the reply, then the final EOS)
            if merged and not rendered[0][merged[-1][1]:start].strip():
                start = merged.pop()[0]
            merged.append((start, end))
        return rendered[0], merged

    def _turn_spans(self, messages: list[dict], tools: list[dict] | None) -> tuple[str, list[tuple[int, int]]]:
        messages = self.prepare(messages)
        full = self.render(messages, tools=tools)
        spans = []
        for i in (i for i, m in enumerate(messages) if m["role"] == "assistant"):
            prompt = self.render(messages[:i], generation_prompt=True, tools=tools)
            if not full.startswith(prompt):
                spans.append((0, 0))  # the check below reports it
                continue
            upto = self.render(messages[: i + 1], tools=tools)
            # Where this turn's render and the full one part: the next turn starts, or a final-turn-only token.
            end = common_prefix(upto, full)
            spans.append((len(prompt), len(full[:end].rstrip())))
        return full, spans

    def spans(self, messages: list[dict], last_only: bool = False, tools: list[dict] | None = None) \
            -> tuple[str, list[tuple[int, int]]]:
        """(rendered text, character span of each assistant reply), checked; the last reply only with last_only.
        An assistant turn that calls tools is one reply: its calls are trained, the tools' results are not."""
        found = self._turn_spans if self.how == "turns" else self._marked_spans
        text, spans = found(messages, tools)
        spans = self.check(messages, text, spans, tools)
        return text, spans[-1:] if last_only else spans

    def check(self, messages: list[dict], text: str, spans: list[tuple[int, int]],
              tools: list[dict] | None = None) -> list[tuple[int, int]]:
        """The spans checked against the messages (masks.check_spans), trailing whitespace dropped."""
        return check_spans(self, self.prepare(messages), text, spans, tools)

    @functools.cached_property
    def added_tokens(self) -> list[str]:
        """The tokenizer's added tokens (control tokens), longest first."""
        return sorted(self.tokenizer.get_added_vocab(), key=len, reverse=True)

    @functools.cached_property
    def end_of_turn(self) -> str | None:
        """The control token that closes an assistant reply (``<|im_end|>``, ``<end_of_turn>``, ``<|eot_id|>``...)."""
        probe = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"},
                 {"role": "user", "content": "again"}]
        try:
            text, spans = self.spans(probe)
        except UserError:
            return None
        tail = text[text.find("pong", spans[0][0]) + len("pong"): spans[0][1]]
        found = [(tail.find(tok), tok) for tok in self.tokenizer.get_added_vocab() if tok in tail]
        return min(found)[1] if found else None

    def stop_ids(self, generation_config=None) -> list[int]:
        """Token ids generation must stop on: the tokenizer's and the model's EOS ids, and the end-of-turn token."""
        ids = eos_ids(self.tokenizer, generation_config)
        if self.end_of_turn:
            ids.add(self.tokenizer.convert_tokens_to_ids(self.end_of_turn))
        return sorted(ids)

    def encode(self, messages: list[dict], last_only: bool = False, tools: list[dict] | None = None) -> dict:
        """Token ids and an assistant mask (1 = carries loss): each reply and its end-of-turn token."""
        _, ids, mask, _ = self.tokens(messages, last_only, tools)
        return {"input_ids": ids, "assistant_masks": mask}

    def tokens(self, messages: list[dict], last_only: bool = False, tools: list[dict] | None = None) \
            -> tuple[str, list[int], list[int], list[int]]:
        """(rendered text, token ids, assistant mask, each token's start offset in the text).

        Character spans map to tokens through the fast tokenizer's offsets: a token is trained when it starts
        inside a span, so a token merged across the boundary goes with the side it starts on."""
        text, spans = self.spans(messages, last_only, tools)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        starts = [a for a, _ in enc["offset_mapping"]]
        return text, enc["input_ids"], span_mask(starts, spans), starts

    def encode_batch(self, conversations: list[list[dict]], tools: list[list[dict] | None] | None = None) \
            -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
        """``encode`` for many conversations (each with its row's tools, if any), their spans found and checked row
        by row and their texts tokenised in one batch call: (token ids, the token index range of each reply's
        span)."""
        found = [self.spans(messages, tools=row_tools) for messages, row_tools in
                 zip(conversations, tools or [None] * len(conversations))]
        ids, offsets = token_ids(self.tokenizer, [text for text, _ in found], add_special_tokens=False, offsets=True)
        return ids, [token_spans([a for a, _ in starts], spans) for (_, spans), starts in zip(found, offsets)]

    def split_reply(self, prompt: list[dict], reply: list[dict]) -> tuple[str, str]:
        """(prompt text, reply text) of one reply as SFT trains it: for trainers that take plain strings. A BOS token
        the tokenizer adds by itself is left off the prompt, so it is not doubled."""
        text, spans = self.spans(prompt + reply, last_only=True)
        start, end = spans[0]
        head = text[:start]
        bos = self.tokenizer.bos_token
        if bos and head.startswith(bos) and self._adds_bos:
            head = head[len(bos):]
        return head, text[start:end]

    _adds_bos = functools.cached_property(lambda self: self.tokenizer("x")["input_ids"][:1] == [
        self.tokenizer.bos_token_id])


def reply_end(tokenizer) -> str | None:
    """The token a rendered reply ends with: the template's end-of-turn token, else the tokenizer's EOS. The trainers
    that take strings (DPO, ORPO, KTO) append their tokenizer's EOS to a reply that does not end with it."""
    end = chat_format(tokenizer).end_of_turn if tokenizer.chat_template else None
    return end or tokenizer.eos_token


def _rejects_system(tokenizer, template: str) -> bool:
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
             {"role": "assistant", "content": "a"}]
    try:
        tokenizer.apply_chat_template(probe, tokenize=False, chat_template=template)
    except TemplateError:
        return True
    return False


def _training_template(tokenizer) -> tuple[str, str]:
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if has_generation_markers(template):
        return template, "markers"
    try:
        twin = get_training_chat_template(tokenizer)
    except (ValueError, TemplateError, TypeError):  # TRL has no twin for this template
        twin = None
    return (twin, "trl") if twin else (template, "turns")


@functools.lru_cache(maxsize=16)
def _cached(tokenizer, template: str) -> ChatFormat:
    training, how = _training_template(tokenizer)
    folds = _rejects_system(tokenizer, training)
    if folds:
        warn("the chat template rejects system messages: each row's system text is put at the start of its "
             "first user turn")
    return ChatFormat(tokenizer, training, how, folds)


def use_template_file(tokenizer, path: str | None) -> None:
    """Put the template in ``path`` (--chat_template) on the tokenizer: training saves it with the run."""
    if path:
        with open(path, encoding="utf-8") as handle:
            tokenizer.chat_template = handle.read()


def chat_format(tokenizer) -> ChatFormat:
    """The ChatFormat of a tokenizer's current chat template (worked out once per tokenizer and template)."""
    if isinstance(tokenizer.chat_template, dict):  # named variants: the default one is what chat uses
        tokenizer.chat_template = tokenizer.chat_template.get("default")
    require_chat_template(tokenizer, tokenizer.name_or_path or "the model")
    return _cached(tokenizer, tokenizer.chat_template)


def require_chat_template(tokenizer, model: str) -> None:
    if not tokenizer.chat_template:
        raise UserError(f"the tokenizer of {model} has no chat template, which conversational data need; "
                        "use a chat model, pass one with --chat_template FILE, or give the data as plain 'text' "
                        "or prompt/completion strings")
