"""The Distiller in a plain PyTorch loop: no Trainer, no config — just (logits, {name: loss}).

Distils a small ConvNet from a briefly trained wider one on scikit-learn digits with FitNets + CE.
Run: python examples/plain_loop.py
"""

import torch

from featdistill.data import Augmenter, ViewConfig, ViewLoader, eval_loader, load_dataset
from featdistill.distiller import Distiller
from featdistill.methods import build_method
from featdistill.models import build_model

torch.manual_seed(0)
train, test = load_dataset("digits")
loader = ViewLoader(train, batch_size=64, augmenter=Augmenter(ViewConfig(pad_crop=1), seed=0), seed=0)
teacher = build_model("convnet", num_classes=10, in_channels=1, image_size=8, width=32, depth=2, norm="batchnorm")
student = build_model("convnet", num_classes=10, in_channels=1, image_size=8, width=8, depth=2, norm="batchnorm")

opt_t = torch.optim.SGD(teacher.parameters(), lr=0.1, momentum=0.9)
for epoch in range(5):  # a quick teacher
    loader.set_epoch(epoch)
    for batch in loader:
        loss = torch.nn.functional.cross_entropy(teacher(batch["input"]), batch["target"])
        opt_t.zero_grad()
        loss.backward()
        opt_t.step()

distiller = Distiller(student, build_method("fitnet", weights={"hint": 1.0}), teacher)
distiller.prepare(next(iter(loader)))  # probe shapes once: builds the hint adapter
opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1, momentum=0.9)
for epoch in range(4):
    loader.set_epoch(epoch)
    sums: dict[str, float] = {}
    for batch in loader:
        logits, losses = distiller(batch, epoch=epoch)  # {"ce": …, "hint": …}, already weighted
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item() / len(loader)
    print(f"epoch {epoch}: " + "  ".join(f"{k}={v:.4f}" for k, v in sums.items()))

student.eval()
with torch.no_grad():
    correct = sum(int((student(b["input"]).argmax(1) == b["target"]).sum()) for b in eval_loader(test, 256))
print(f"student test accuracy: {correct / len(test):.4f}")
