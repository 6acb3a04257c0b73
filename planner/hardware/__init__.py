"""Hardware profiles: what a machine can do (rates, memory, links), their schema, validation and identity."""
