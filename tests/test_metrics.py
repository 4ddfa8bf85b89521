"""Held-out scores: the unigram baseline and unit conversions."""
import math

import numpy as np
import pytest

from fastrnn.metrics import bits_per_token, perplexity, unigram_bits


def test_unigram_bits_add_one_smoothing():
    # counts + 1 = [3, 1, 2] over 6: p = [1/2, 1/6, 1/3]
    got = unigram_bits(np.array([0, 0, 2]), np.array([0, 1, 2, 2]), 3)
    expect = -(math.log2(1 / 2) + math.log2(1 / 6) + 2 * math.log2(1 / 3)) / 4
    assert got == pytest.approx(expect, rel=1e-14)
    # a uniform train set scores log2(V)
    assert unigram_bits(np.arange(8), np.array([3, 5]), 8) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="out of range"):
        unigram_bits(np.array([0, 3]), np.array([0]), 3)
    with pytest.raises(TypeError, match="integers"):
        unigram_bits(np.array([0.0]), np.array([0]), 3)
    with pytest.raises(ValueError, match="empty"):
        unigram_bits(np.array([0]), np.array([], dtype=np.int64), 3)


def test_cli_still_exports_the_helper():
    from fastrnn import cli
    assert cli.unigram_bits is unigram_bits


def test_unit_conversions():
    assert bits_per_token(math.log(2)) == pytest.approx(1.0)
    assert perplexity(math.log(7.5)) == pytest.approx(7.5)
