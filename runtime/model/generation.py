"""The reference generation backend: each request prefilled and decoded on its own cache, no padding.

`ReferenceBackend(model).run(states)` drives every `GenerationState` (runtime.sampling) to completion:
prefill the prompt, pick a token from the last logits, decode it, until the state reports a finish. It is
the oracle the engine's backend (same `run(states)` interface) is checked against.
"""

from __future__ import annotations

from collections.abc import Sequence

from runtime.model.reference import ReferenceModel
from runtime.sampler import sample_states
from runtime.sampling import GenerationState


class ReferenceBackend:
    def __init__(self, model: ReferenceModel):
        self.model = model

    def run(self, states: Sequence[GenerationState]) -> None:
        for state in states:
            cache = self.model.new_cache()
            logits = self.model.prefill(state.prompt_token_ids, cache, last_only=True)[-1]
            while not state.append(sample_states(logits.reshape(1, -1), [state])[0]):
                logits = self.model.decode(state.token_ids[-1], cache)
