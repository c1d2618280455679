"""Small networks of the model zoo the tests run (``--arch tests/zoo.py:NAME`` or ``tests.zoo:NAME``).

Every one is a function returning a module, as a user's own ``file.py:make_net`` would be. Sizes are
small on purpose: the dense references build explicit Jacobians.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchViT(nn.Module):
    """A tiny vision transformer: square patches → tokens → attention → mean → classes.

    ``attention="mha"`` uses ``nn.MultiheadAttention`` (its fused fast path in eval mode);
    ``attention="sdpa"`` computes q, k, v itself and calls ``F.scaled_dot_product_attention``.
    """

    def __init__(self, image_size: int = 28, patch: int = 7, channels: int = 1, dim: int = 16, heads: int = 2,
                 num_classes: int = 10, attention: str = "mha"):
        super().__init__()
        self.patch, self.heads, self.attention = patch, heads, attention
        tokens = (image_size // patch) ** 2
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        if attention == "mha":
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        p = F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)  # (N, tokens, C·p·p)
        h = self.embed(p) + self.pos
        if self.attention == "mha":
            a, _ = self.attn(h, h, h, need_weights=False)
        else:
            n, t, d = h.shape
            q, k, v = (z.view(n, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(h).chunk(3, -1))
            a = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d))
        return self.head(self.norm(h + a).mean(1))


class TokenClassifier(nn.Module):
    """Integer tokens → embedding → ``nn.TransformerEncoder`` (one layer) → mean → classes."""

    def __init__(self, vocab: int = 32, dim: int = 16, heads: int = 2, length: int = 12, num_classes: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(1, length, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens) + self.pos[:, : tokens.shape[1]]).mean(1))


def vit_mha(**kw) -> nn.Module:
    return PatchViT(attention="mha", **kw)


def vit_sdpa(**kw) -> nn.Module:
    return PatchViT(attention="sdpa", **kw)


def text_classifier(**kw) -> nn.Module:
    return TokenClassifier(**kw)


def sequential_mlp(hidden: int = 32, num_classes: int = 10) -> nn.Module:
    """The most common checkpoint: ``torch.save(nn.Sequential(...).state_dict())``."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
