"""rlsparsity: does RL update only a small, full-rank subnetwork of an LLM?

Replicates arXiv 2505.11711 (RL finetunes small subnetworks) and arXiv 2506.01939
(high-entropy minority tokens) end to end. The package is importable without torch
for the light parts (config, grid, paths); heavy modules import torch lazily.
"""

__version__ = "0.1.0"
