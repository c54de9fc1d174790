"""Write the old-format training checkpoints of tests/test_trainer.py with the code of commit 88ab840
(the last commit before the optimizers became gradient transformations and the loop a Trainer).

Run from the repository root with that commit's package first on the path::

    rm -rf /tmp/mgritnn-88ab840 && mkdir /tmp/mgritnn-88ab840
    git archive 88ab840 mgritnn | tar -x -C /tmp/mgritnn-88ab840
    PYTHONPATH=/tmp/mgritnn-88ab840 python tests/data/make_checkpoints_88ab840.py

It writes, for each case of :data:`CASES` (the TrainConfig fields of a tiny run):

* ``checkpoint_88ab840_<case>.npz``: the checkpoint after epoch 1 of a 2-epoch run;
* ``final_88ab840.npz``: ``<case>`` -> the flat parameters after the same run's 2 epochs,
  uninterrupted (float32 or float64 as the case), and ``<case>_grad0`` -> the flat gradient of
  the initial model on the first 32 standardized training samples (:func:`fingerprint`: where a
  platform computes it bit for bit, it computes these runs bit for bit too).
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

#: Adam with L2 weight decay and active clipping in float32; SGD with momentum and weight decay in
#: float64. Small enough for a test, three batches an epoch.
CASES = {
    "adam": dict(hidden=4, seq_len=12, batch_size=32, max_batches=3, dtype="float32",
                 optimizer="adam", lr=0.01, weight_decay=0.01, clip=0.5, seed=1, threads=1),
    "sgd": dict(hidden=4, seq_len=12, batch_size=32, max_batches=3, dtype="float64",
                optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.01, seed=2, threads=1),
}


def fingerprint(kw):
    """The flat gradient of the run's initial model on its first 32 standardized training
    samples (public API only, so the test computes it with the code under test)."""
    from mgritnn import GRUClassifier, datasets
    ds = datasets.load("default", seq_len=kw["seq_len"], seed=kw["seed"])
    X = datasets.Standardizer.fit(ds.X_train).transform(ds.X_train, np.dtype(kw["dtype"]))
    model = GRUClassifier(X.shape[2], kw["hidden"], ds.num_classes, dtype=kw["dtype"],
                          seed=kw["seed"])
    return model.loss_and_grad_flat(X[:32], ds.y_train[:32])[1]


def main():
    import mgritnn
    from mgritnn.train import TrainConfig, train
    print("mgritnn from", os.path.dirname(mgritnn.__file__), file=sys.stderr)
    final = {}
    for name, kw in CASES.items():
        ck = os.path.join(HERE, f"checkpoint_88ab840_{name}.npz")
        if os.path.exists(ck):
            os.remove(ck)
        train(TrainConfig(epochs=1, checkpoint=ck, **kw), out=lambda *a: None, progress=False)
        model, _ = train(TrainConfig(epochs=2, **kw), out=lambda *a: None, progress=False)
        final[name] = model.flat.copy()
        final[f"{name}_grad0"] = fingerprint(kw)
    np.savez(os.path.join(HERE, "final_88ab840.npz"), **final)


if __name__ == "__main__":
    main()
