"""The Chat tab's models: each loaded on first use and kept (three at most, the oldest dropped first), and replies
streamed from a thread as they are generated."""

from __future__ import annotations

import queue
import threading

from ..config import ChatConfig


class Speakers:
    """The loaded chat models, shared by every browser tab."""

    def __init__(self):
        self._loaded: dict[str | None, object] = {}
        self._lock = threading.Lock()

    def get(self, source: str | None):
        from ..deploy.chat import load_speaker

        with self._lock:
            if source not in self._loaded:
                if len(self._loaded) >= 3:  # keep memory bounded: drop the oldest
                    self._loaded.pop(next(iter(self._loaded)))
                self._loaded[source] = load_speaker(source)
            return self._loaded[source]

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
