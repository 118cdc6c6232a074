"""Run by test_callback.py in a subprocess: a 2-process DDP fit on CPU (gloo) with the callback.

Lightning's "ddp" strategy re-launches this script once per extra rank, which is why it is a
script and not a test function. Each rank saves the labels its training_step received.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

import salaug
from salaug.callback import SaliencyAugmentation
from salaug.transforms.labels import mix_soft_labels
from test_callback import K, Net, Squares, loader, mix


class ShardNet(Net):
    def on_train_end(self) -> None:
        labels = torch.stack([y for _, y in self.seen])
        torch.save(labels, os.path.join(sys.argv[1], f"rank{self.global_rank}.pt"))


class ForwardShardNet(ShardNet):
    """Records the labels after its forward: with forward labels that forward fills them."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        aug = next(c for c in self.trainer.callbacks if isinstance(c, SaliencyAugmentation)).augmenter
        record = aug.last  # the area labels the boxes alone give (the forward replaces them)
        area = aug.transform.area_share(record.params, x.shape[-2:]) * record.params["applied"]
        before = mix_soft_labels(F.one_hot(record.labels, K).float(), record.params["perm"], area)
        logits = self(x)
        self.seen.append((before, y.detach().clone()))
        return F.cross_entropy(logits, y)

    def on_train_end(self) -> None:
        super().on_train_end()
        before = torch.stack([b for b, _ in self.seen])
        torch.save(before, os.path.join(sys.argv[1], f"rank{self.global_rank}_before.pt"))


if __name__ == "__main__":
    pl.seed_everything(0)
    # Both ranks see the same batches in the same order (no distributed sampler) and hold the same
    # weights, so any difference in their augmented labels comes from their random streams.
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, default_root_dir=sys.argv[1],
                         callbacks=[SaliencyAugmentation(mix(), target_layer="net.5", seed=1)])
    if sys.argv[2:] == ["forward"]:  # SnapMix's default: labels from each rank's own training forward
        trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             use_distributed_sampler=False, default_root_dir=sys.argv[1],
                             callbacks=[SaliencyAugmentation(salaug.SnapMix(num_classes=K, p=1.0),
                                                             target_layer="net.5", seed=1)])
        trainer.fit(ForwardShardNet(), loader(Squares(n=16)))
        sys.exit(0)
    trainer.fit(ShardNet(), loader(Squares(n=16)))
