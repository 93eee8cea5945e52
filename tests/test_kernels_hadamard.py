import math

import pytest
import torch
from kernels_reference import sylvester

from kvarn_cli.kernels.hadamard import hadamard_matrix, rotation_on


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 128, 256])
def test_orthonormal_symmetric_and_matches_sylvester(n: int) -> None:
    h = hadamard_matrix(n)
    assert h.dtype == torch.float32 and h.shape == (n, n)
    assert torch.allclose(h.double() @ h.double().T, torch.eye(n, dtype=torch.float64), atol=1e-6)
    assert torch.equal(h, h.T)
    assert torch.allclose(h.abs(), torch.full((n, n), 1 / math.sqrt(n)), rtol=1e-7)
    assert torch.allclose(h.double(), sylvester(n), atol=1e-7)


def test_rotation_preserves_dot_products() -> None:
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(5, 128, generator=gen), torch.randn(7, 128, generator=gen)
    h = hadamard_matrix(128)
    assert torch.allclose((q @ h) @ (k @ h).T, q @ k.T, atol=1e-4)


def test_returned_matrix_is_a_copy() -> None:
    h = hadamard_matrix(64)
    h.zero_()
    assert hadamard_matrix(64).abs().min() > 0
    assert rotation_on(64, torch.device("cpu")).abs().min() > 0


@pytest.mark.parametrize("n", [0, 3, 96, -4, 2.0, True])
def test_bad_sizes(n: object) -> None:
    with pytest.raises(ValueError, match="power of two"):
        hadamard_matrix(n)  # type: ignore[arg-type]
