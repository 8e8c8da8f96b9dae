"""Lossless speculative decoding: drafters (a learned n-gram trie), token trees, tree verification.

Import the submodules directly; this package keeps no imports so the torch-free parts
(drafting, policy) stay importable without torch.
"""
