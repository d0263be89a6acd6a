"""Layer 3: recover quality after pruning by training: KD losses (pure), the accelerate trainer,
gradual ZipLM (prune -> distill -> re-prune), LayerChop continued pretraining."""
