"""DLRM: one sparse EmbeddingBag per categorical feature, a bottom MLP over dense features,
pairwise dot-product interaction (or a DCNv2 cross network), a top MLP to one logit."""

from __future__ import annotations

import math

import torch
from torch import nn

from rectrain_api.trainer_config import ModelConfig


def mlp(sizes: list[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0 / (sizes[i] + sizes[i + 1])))
        nn.init.normal_(lin.bias, 0.0, math.sqrt(1.0 / sizes[i + 1]))
        layers.append(lin)
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class CrossNetV2(nn.Module):
    """DCNv2 cross layers: x_{l+1} = x0 * (W_l x_l + b_l) + x_l."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        for lin in self.layers:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for lin in self.layers:
            x = x0 * lin(x) + x
        return x


class DLRM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embeddingDim
        if cfg.numDenseFeatures > 0 and cfg.bottomMlp and cfg.bottomMlp[-1] != d:
            raise ValueError(f"model.bottomMlp: the last size ({cfg.bottomMlp[-1]}) must equal model.embeddingDim ({d})")
        self.cfg = cfg
        self.num_dense = cfg.numDenseFeatures
        self.embeddings = nn.ModuleList()
        for rows in cfg.tableSizes:
            eb = nn.EmbeddingBag(rows, d, mode="sum", sparse=True)
            # Small uniform init (TorchRec's default); N(0,1) trains markedly worse.
            bound = math.sqrt(1.0 / rows)
            nn.init.uniform_(eb.weight, -bound, bound)
            self.embeddings.append(eb)
        self.bottom = mlp([cfg.numDenseFeatures, *cfg.bottomMlp], last_activation=True) if cfg.numDenseFeatures > 0 else None
        n_vec = len(cfg.tableSizes) + (1 if self.bottom is not None else 0)
        self.interaction = cfg.interaction
        if cfg.interaction == "dot":
            iu = torch.triu_indices(n_vec, n_vec, offset=1)
            self.register_buffer("_tri_i", iu[0], persistent=False)
            self.register_buffer("_tri_j", iu[1], persistent=False)
            top_in = (d if self.bottom is not None else 0) + n_vec * (n_vec - 1) // 2
            self.cross = None
        else:
            top_in = n_vec * d
            self.cross = CrossNetV2(top_in, cfg.dcnLayers)
        self.top = mlp([top_in, *cfg.topMlp, 1], last_activation=False)

    def embed(self, cat: torch.Tensor) -> list[torch.Tensor]:
        # One id per feature per row (Criteo): bag of size 1, offsets = row positions.
        n = cat.shape[0]
        offsets = torch.arange(n, device=cat.device)
        return [eb(cat[:, f].contiguous(), offsets) for f, eb in enumerate(self.embeddings)]

    def forward(self, dense: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        vecs = self.embed(cat)
        if self.bottom is not None:
            z = self.bottom(dense)
            vecs = [z, *vecs]
        else:
            z = None
        if self.cross is None:
            t = torch.stack(vecs, dim=1)  # [n, F, d]
            inter = torch.bmm(t, t.transpose(1, 2))[:, self._tri_i, self._tri_j]
            x = torch.cat([z, inter], dim=1) if z is not None else inter
        else:
            x = self.cross(torch.cat(vecs, dim=1))
        return self.top(x).squeeze(1)

    def sparse_parameters(self):
        return list(self.embeddings.parameters())

    def dense_parameters(self):
        ids = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]
