import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvarn_cli.kernels.packing import pack_codes, unpack_codes


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([2, 4, 8]), groups=st.integers(0, 40), rows=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_pack_unpack_round_trip(bits: int, groups: int, rows: int, seed: int) -> None:
    n = groups * (8 // bits)
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (rows, n), generator=gen, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (rows, n * bits // 8)
    assert torch.equal(unpack_codes(packed, bits), codes)


def test_bit_order_is_little_endian_within_a_byte() -> None:
    codes = torch.tensor([1, 2, 3, 0, 0, 3, 3, 3], dtype=torch.uint8)
    # element j sits at bit offset 2*j of its byte: 1 + 2<<2 + 3<<4 = 57; then 0,3,3,3 -> 0b11111100
    assert pack_codes(codes, 2).tolist() == [1 + (2 << 2) + (3 << 4), 0b11111100]
    assert pack_codes(torch.tensor([5, 12], dtype=torch.uint8), 4).tolist() == [5 + (12 << 4)]


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([2, 4]), byte_values=st.lists(st.integers(0, 255), min_size=1, max_size=64))
def test_every_byte_pattern_round_trips(bits: int, byte_values: list[int]) -> None:
    packed = torch.tensor(byte_values, dtype=torch.uint8)
    assert torch.equal(pack_codes(unpack_codes(packed, bits), bits), packed)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="bits"):
        pack_codes(torch.zeros(8, dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="uint8"):
        pack_codes(torch.zeros(8, dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="multiple"):
        pack_codes(torch.zeros(6, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="uint8"):
        unpack_codes(torch.zeros(4, dtype=torch.float32), 4)
