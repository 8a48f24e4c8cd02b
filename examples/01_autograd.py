"""Autograd in one screen: build a graph, run backward, and check it against finite differences.

    python examples/01_autograd.py
"""

import numpy as np

import minift as mf
from minift import functional as F

# y = sum(tanh(x W^T + b)): the chain rule gives dy/dW = ((1 - tanh^2) ⊙ 1)^T x
x = mf.tensor(np.random.default_rng(0).standard_normal((4, 3)))  # float64 stays float64
w = mf.tensor(np.random.default_rng(1).standard_normal((2, 3)), requires_grad=True)
b = mf.tensor(np.zeros(2), requires_grad=True)

y = F.linear(x, w, b).tanh().sum()
y.backward()

h = np.tanh(x.numpy() @ w.numpy().T + b.numpy())
by_hand = ((1 - h**2).T @ x.numpy())
print("dy/dW from backward():\n", w.grad.numpy().round(6))
print("dy/dW by hand:\n", by_hand.round(6))
print("max difference:", float(np.abs(w.grad.numpy() - by_hand).max()))

# gradcheck compares backward with central differences for every entry
ok = mf.gradcheck(lambda w, b: F.linear(x, w, b).tanh(), [w, b])
print("gradcheck passed:", ok)
