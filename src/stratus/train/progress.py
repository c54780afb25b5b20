"""The progress bar of a training job (rank 0): steps, loss, tokens/s and the time left."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, done: int, enabled: bool):
        self.bar = (
            tqdm(
                total=total,
                initial=done,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
                disable=not enabled,
            )
            if enabled
            else None
        )
        self._rate: float | None = None

    def update(self, loss: float, tokens: int, seconds: float) -> None:
        if self.bar is None:
            return
        rate = tokens / max(seconds, 1e-9)
        self._rate = rate if self._rate is None else 0.9 * self._rate + 0.1 * rate
        self.bar.set_postfix_str(f"loss {loss:.4f}, {self._rate:,.0f} tok/s", refresh=False)
        self.bar.update(1)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
