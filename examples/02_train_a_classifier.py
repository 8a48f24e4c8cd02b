"""Train a small MLP on two interleaved spirals with AdamW: the whole loop, no Trainer.

    python examples/02_train_a_classifier.py [steps]
"""

import sys

import numpy as np

import minift as mf
from minift import functional as F
from minift import nn, optim


def spirals(n_per_class: int, rng: np.random.Generator):
    """Two spirals in the plane: a problem no linear model can solve."""
    t = np.sqrt(rng.uniform(0.05, 1, n_per_class)) * 3 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (3 * np.pi)
    points = np.concatenate([arm, -arm]) + rng.normal(0, 0.02, (2 * n_per_class, 2))
    labels = np.repeat([0, 1], n_per_class)
    return points.astype(np.float32), labels


def main(steps: int) -> float:
    mf.manual_seed(0)
    rng = np.random.default_rng(0)
    points, labels = spirals(200, rng)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    x, y = mf.tensor(points), mf.tensor(labels)
    for step in range(1, steps + 1):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % max(steps // 5, 1) == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    with mf.no_grad():
        accuracy = float((model(x).numpy().argmax(-1) == labels).mean())
    print(f"training accuracy: {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
