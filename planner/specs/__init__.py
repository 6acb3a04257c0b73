"""Model specs: what a model is (shapes, experts, attention kind), read from shipped YAML or an HF config.json."""
