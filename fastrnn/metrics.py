"""Scores for held-out data: unit conversions of a mean cross-entropy and the
baselines a language model's score is read against.

>>> nats = lm.evaluate(test_ids)                      # mean nats per token
>>> bits_per_token(nats), perplexity(nats)
>>> unigram_bits(train_ids, test_ids, len(vocab))     # what "no context" scores
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["unigram_bits", "bits_per_token", "perplexity"]


def unigram_bits(train_ids, test_ids, vocab_size):
    """Cross-entropy (bits/token) of ``test_ids`` under the add-one smoothed
    unigram distribution of ``train_ids``:

    .. math:: p(v) = \\frac{\\mathrm{count}_{train}(v) + 1}{N_{train} + V},\\quad
              H = -\\frac{1}{N_{test}} \\sum_{t} \\log_2 p(\\mathrm{test}_t)

    A language model that beats it has learnt something from context.
    """
    train_ids = np.asarray(train_ids)
    test_ids = np.asarray(test_ids)
    vocab_size = int(vocab_size)
    for name, ids in (("train_ids", train_ids), ("test_ids", test_ids)):
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f"{name} out of range [0, {vocab_size})")
    if test_ids.size == 0:
        raise ValueError("test_ids is empty")
    counts = np.bincount(train_ids.ravel(), minlength=vocab_size) + 1.0
    p = counts / counts.sum()
    return float(-np.mean(np.log2(p[test_ids])))


def bits_per_token(nats):
    """A cross-entropy in nats per token as bits per token (``nats / ln 2``)."""
    return float(nats) / math.log(2)


def perplexity(nats):
    """The perplexity ``exp(nats)`` of a mean cross-entropy in nats per token."""
    return math.exp(float(nats))
