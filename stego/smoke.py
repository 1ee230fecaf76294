"""A short end-to-end run of the core on random images and a random-init backbone: does everything connect?"""
import logging
import time

import torch

from .backbones import build_backbone
from .loss import CorrespondenceLoss, LossConfig
from .metrics import ConfusionMatrix, cluster_scores
from .model import ClusterProbe, SegmentationHead

log = logging.getLogger(__name__)


def smoke(steps: int = 5, batch: int = 4, res: int = 64, seed: int = 0) -> dict:
    """Train the head for a few steps on noise with a random ViT-S/16 and score the cluster probe; returns numbers."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    backbone = build_backbone("dino_vits16", weights="random")
    head = SegmentationHead(backbone.dim, 16)
    probe = ClusterProbe(16, 3)
    loss_fn = CorrespondenceLoss(LossConfig(feature_samples=5, neg_samples=2))
    opt = torch.optim.Adam([{"params": head.parameters(), "lr": 5e-4}, {"params": probe.parameters(), "lr": 5e-3}])
    losses = []
    for step in range(steps):
        images = torch.randn(2 * batch, 3, res, res)
        feats = backbone(images)
        teacher, code = head(feats)
        out = loss_fn(teacher[:batch], teacher[batch:], code[:batch], code[batch:])
        total = out.total + probe.loss(code.detach())
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(out.total.item())
        log.info("step %d/%d  loss %.4f  corr self %.3f knn %.3f rand %.3f", step + 1, steps, out.total.item(),
                 out.corr_self.item(), out.corr_knn.item(), out.corr_rand.item())
    head.eval()
    with torch.no_grad():
        code = head(backbone(torch.randn(batch, 3, res, res)))[1]
        pred = probe.log_probs(code).argmax(dim=1)
    labels = torch.randint(0, 3, pred.shape)
    confusion = ConfusionMatrix(3, 3)
    confusion.update(pred, labels)
    scores = cluster_scores(confusion)
    return {"losses": losses, "miou": scores.miou, "accuracy": scores.accuracy,
            "seconds": time.perf_counter() - start}
