"""Compiled kernels of fastrnn, installed as the subpackage ``fastrnn.kernels``.

- :mod:`fastrnn.kernels.pointwise`  each cell's step and derivative, written once
- :mod:`fastrnn.kernels.activations` fast tanh / sigmoid for the CPU
- :mod:`fastrnn.kernels.cpu`        the CPU backend (Numba ``@njit`` loops, packed kernels;
                                     its modules: see the README's Layout)
- :mod:`fastrnn.kernels.training`   ``@njit`` loops of the training step around the layers
                                     (optimizer updates, grad norm, embedding, softmax loss)
- :mod:`fastrnn.kernels.cuda`       ``numba.cuda`` kernels
"""
