"""PyTorch models of HybridFlow: the two stage-1 autoencoders, the masked-token predictor and the
correction decoder, plus their training code. Needs the ``[train]`` extra (torch)."""
