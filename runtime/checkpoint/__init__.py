"""HF checkpoint directories: lazy loading under canonical names, and random real-shape checkpoints.

`open_checkpoint(dir) -> Checkpoint` (contract in docs/contracts.md); `write_random_checkpoint(spec, out, ...)`
is what `runtime make-checkpoint` runs;
`CheckpointGeneration.of(checkpoint)`: its EOS ids, detokenizer and new generation states.
"""

from __future__ import annotations

from runtime.checkpoint.generation import CheckpointGeneration
from runtime.checkpoint.loader import Checkpoint, LazyWeights, open_checkpoint
from runtime.checkpoint.names import ExpectedTensor, expected_tensors
from runtime.checkpoint.tokenizer import CheckpointTokenizer, load_tokenizer
from runtime.checkpoint.writer import WrittenCheckpoint, write_random_checkpoint

__all__ = [
    "Checkpoint",
    "CheckpointGeneration",
    "CheckpointTokenizer",
    "ExpectedTensor",
    "LazyWeights",
    "WrittenCheckpoint",
    "expected_tensors",
    "load_tokenizer",
    "open_checkpoint",
    "write_random_checkpoint",
]
