"""Helpers shared by the examples: argument defaults and the training-curve plot."""
import os


def plot_history(history, path, title, keys=("loss", "val_loss"), extra=None):
    """Save a PNG of the training curves in ``history`` when matplotlib is
    installed; returns the path, or None (and says why) when it is not."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot; pip install matplotlib)")
        return None
    epochs = history["epoch"]
    n = 1 + (extra is not None)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.5), squeeze=False)
    ax = axes[0, 0]
    for k in keys:
        if k in history:
            ax.plot(epochs, history[k], label=k.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    if extra is not None:
        k = extra
        axes[0, 1].plot(epochs, history[k])
        axes[0, 1].set_xlabel("epoch")
        axes[0, 1].set_title(k.replace("_", " "))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"training curves saved to {path}")
    return path
