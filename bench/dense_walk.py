"""The dense reference of the random walk, done as IRN does it (`misc/indexing.py`): the whole
h*w x h*w affinity matrix, columns normalised, squared exp_times times, then applied to the maps
from the right. For tests and `bench/random_walk.py` only: at 125 x 94 the matrix is 550 MB.
"""
from __future__ import annotations

import torch

from pipeline.refine.affinity import boundary_affinity, pair_offsets


def dense_affinity(affinity: torch.Tensor, radius: int) -> torch.Tensor:
    """[h*w, h*w] matrix of affinities [P, h, w], each pair at (i, j) and (j, i), 1 on the
    diagonal, filled through a 4-D view [h, w, h, w] offset by offset (no flat index arithmetic)."""
    height, width = affinity.shape[1:]
    matrix = torch.zeros(height, width, height, width, dtype=affinity.dtype)
    for (dy, dx), values in zip(pair_offsets(radius), affinity):
        ys = torch.arange(height - dy)
        xs = torch.arange(max(0, -dx), width - max(0, dx))
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        matrix[y, x, y + dy, x + dx] = values[y, x]
        matrix[y + dy, x + dx, y, x] = values[y, x]
    matrix = matrix.view(height * width, height * width)
    matrix.diagonal().fill_(1.0)
    return matrix


def dense_walk(maps: torch.Tensor, affinity: torch.Tensor, radius: int = 5, beta: float = 10.0,
               exp_times: int = 8) -> torch.Tensor:
    """[C, h, w] maps walked 2^exp_times steps: maps @ (A^beta D^-1)^(2^exp_times), the matrix
    squared in place between two buffers so that at most two of them exist at once."""
    channels, height, width = maps.shape
    matrix = dense_affinity(affinity, radius).pow_(beta)
    matrix /= matrix.sum(0, keepdim=True)
    spare = torch.empty_like(matrix)
    for _ in range(exp_times):
        torch.matmul(matrix, matrix, out=spare)
        matrix, spare = spare, matrix
    del spare
    return (maps.reshape(channels, -1).to(matrix.dtype) @ matrix).reshape(channels, height, width)


@torch.no_grad()
def dense_propagate(cams: torch.Tensor, boundary: torch.Tensor, radius: int = 5, beta: float = 10.0,
                    exp_times: int = 8) -> torch.Tensor:
    """IRN's `propagate_to_edge`, dense: the CAMs times 1 - boundary, walked."""
    affinity = boundary_affinity(boundary, radius)
    return dense_walk(cams * (1.0 - boundary), affinity, radius, beta, exp_times)
