"""The Chat tab's models: each loaded on first use and kept while the tab shows it, two at most (models A and B), so
the UI's process holds no more than a chat needs beside a training job; a model the tab stops showing is freed at
once. Replies are streamed from a thread as they are generated."""

from __future__ import annotations

import gc
import queue
import sys
import threading
from collections import OrderedDict

from ..config import ChatConfig

MAX_LOADED = 2  # the two models a Chat tab shows side by side


class Speakers:
    """The loaded chat models, shared by every browser tab."""

    def __init__(self):
        self._loaded: OrderedDict[str | None, object] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def get(self, source: str | None):
        from ..deploy.chat import load_speaker

        with self._lock:
            if source in self._loaded:
                self._loaded.move_to_end(source)
                return self._loaded[source]
            while len(self._loaded) >= MAX_LOADED:  # before loading: never three in memory
                self._loaded.popitem(last=False)
                free()
            self._loaded[source] = load_speaker(source)
            return self._loaded[source]

    def keep(self, sources: list[str | None]) -> None:
        """Free every loaded model but these (the ones the Chat tab now shows)."""
        with self._lock:
            dropped = [source for source in self._loaded if source not in sources]
            for source in dropped:
                del self._loaded[source]
            if dropped:
                free()

    @property
    def loaded(self) -> list[str | None]:
        return list(self._loaded)

    def stream_reply(self, source: str | None, history: list[dict], message: str, cfg: ChatConfig):
        """The reply to ``message`` after ``history``, yielded as it grows (chat.reply runs in a thread)."""
        from ..deploy.chat import Speaker, reply

        loaded = self.get(source)
        speaker = Speaker(loaded.label, loaded.model, loaded.tokenizer, [dict(m) for m in history])
        pieces: queue.Queue = queue.Queue()

        class Pieces:
            def write(self, text: str) -> None:
                if text:
                    pieces.put(text)

            def flush(self) -> None:
                pass

        failure: list[BaseException] = []

        def generate():
            try:
                reply(speaker, message, cfg.system, cfg, Pieces())
            except BaseException as err:  # shown in the page, below
                failure.append(err)
            finally:
                pieces.put(None)

        threading.Thread(target=generate, daemon=True).start()
        text = ""
        while (piece := pieces.get()) is not None:
            text += piece
            yield text
        if failure:
            raise failure[0]


def free() -> None:
    """Give back the memory of models no longer referenced: Python's, and CUDA's cache (which keeps freed blocks for
    this process otherwise, away from a training job)."""
    gc.collect()
    torch = sys.modules.get("torch")  # not imported: no model was ever loaded on any device
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
