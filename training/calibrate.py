"""After training, on the validation split: the fusion share per direction and readable scores.

The global cosine and the patch score live on different scales (0.4…0.9 against whatever
the interaction produces), and a caption ranking images needs a different mix than an
image ranking captions. Both are chosen here on validation, never on test:

* for a CAMP matcher first, a logistic calibration of its logit per direction (the fit below), so that
  its fine score is a probability, not a logit of any scale, when it is mixed with the cosine;
* the patch share w of S = (1−w)·global + w·patch, per direction, by the two-stage
  recall of that direction over each query's global top-k (with views, jointly with
  ρ of patch + ρ·region: the trained ρ, multiples of it, or 0);
* a logistic calibration (scale, bias) per direction of the fused, the global and the
  fine score: each becomes the probability, among a query's top candidates, that the
  pair is a true match. That is what the API returns as `score`, `global_score` and
  `fine_score` (docs/api.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .evaluate import candidate_scores, prepare, ranks_from_scores, recall, two_stage_ranks_from
from .features import Features
from .mining import Truth
from .model.matcher import DIRECTIONS, KINDS, Matcher


def fit_logistic(x: torch.Tensor, y: torch.Tensor, iters: int = 50, l2: float = 1e-4) -> tuple[float, float]:
    """(a, b) minimising the cross-entropy of sigmoid(a·x + b) against labels y: Newton's method on the
    standardised score, with a small ridge so that separable data still gives finite values."""
    x, y = x.double().flatten(), y.double().flatten()
    mu, sd = x.mean(), x.std().clamp(min=1e-6)
    z = torch.stack([(x - mu) / sd, torch.ones_like(x)], dim=1)  # [n, 2]
    w = torch.zeros(2, dtype=torch.float64)
    n = len(x)
    for _ in range(iters):
        p = torch.sigmoid(z @ w)
        grad = z.T @ (p - y) / n + l2 * w
        hess = (z * (p * (1 - p))[:, None]).T @ z / n + l2 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        w = w - step
        if float(step.abs().max()) < 1e-8:
            break
    a, b = w.tolist()
    return a / float(sd), b - a * float(mu) / float(sd)


@torch.inference_mode()
def tune(matcher: Matcher, val: Features, candidates: int, device: torch.device | str, grid: int = 41
         ) -> dict[str, Any]:
    """Set the matcher's per-direction shares and calibration from the validation split; report the choice."""
    p = prepare(matcher, val, device)
    cs = candidate_scores(matcher, p, candidates)
    g_i2t, g_t2i = ranks_from_scores((p.img.globals @ p.txt.globals.T).cpu(), val.txt_img)
    truth = Truth(val.txt_img, val.texts)
    n_txt, n_img = len(val.texts), len(val.image_ids)
    labels = {"t2i": truth.matches(cs.t2i_top.cpu(), torch.arange(n_txt)[:, None]),
              "i2t": truth.matches(torch.arange(n_img)[:, None], cs.i2t_top.cpu())}
    camp: dict[str, Any] = {}
    if matcher.camp is not None:  # CAMP's logit → a probability, before any share is tried
        fitted = torch.tensor([fit_logistic(getattr(cs, f"{d}_patch").cpu(), labels[d].float()) for d in DIRECTIONS])
        matcher.camp_calibration.copy_(fitted.to(matcher.camp_calibration.device))
        cs.calibration = fitted
        camp = {"camp_calibration": {d: [round(v, 4) for v in fitted[i].tolist()] for i, d in enumerate(DIRECTIONS)}}
    # ρ of fine = patch + ρ·region (views): the trained value and multiples of it, or none at all
    trained = float(matcher.region_mix.detach()) if matcher.region_mix is not None else None
    rhos = [0.0] if trained is None else sorted({0.0, *(round(trained * f, 4) for f in (0.25, 0.5, 1, 2, 4))})
    trials_by_rho: dict[float, list[dict[str, float]]] = {}
    for rho in rhos:
        trials = []
        for w in np.linspace(0.0, 1.0, grid).tolist():
            r = recall(*two_stage_ranks_from(cs, val.txt_img, g_i2t, g_t2i, w, w, rho))
            trials.append({"share": round(w, 4), "t2i": sum(r["t2i"].values()), "i2t": sum(r["i2t"].values())})
        trials_by_rho[rho] = trials

    def best_of(trials: list[dict[str, float]]) -> dict[str, dict[str, float]]:
        return {d: max(trials, key=lambda t, d=d: (round(t[d], 2), -t["share"])) for d in DIRECTIONS}

    rho = max(rhos, key=lambda r: (round(sum(t[d] for d, t in best_of(trials_by_rho[r]).items()), 2),
                                   r == trained, -r))
    trials = trials_by_rho[rho]
    best = {d: t["share"] for d, t in best_of(trials).items()}
    matcher.set_shares(best["t2i"], best["i2t"])
    if matcher.region_mix is not None:
        with torch.no_grad():
            matcher.region_mix.fill_(rho)

    scores = {d: (getattr(cs, f"{d}_global").cpu(), cs.fine(d, rho).cpu()) for d in DIRECTIONS}
    calib = torch.zeros(len(DIRECTIONS), len(KINDS), 2)
    for di, d in enumerate(DIRECTIONS):
        g, s = scores[d]
        fused = matcher.mix(g, s, d)
        for ki, x in enumerate((fused, g, s)):
            calib[di, ki] = torch.tensor(fit_logistic(x, labels[d].float()))
    matcher.calibration.copy_(calib.to(matcher.calibration.device))
    matcher.calibrated.fill_(True)
    final = recall(*two_stage_ranks_from(cs, val.txt_img, g_i2t, g_t2i, best["t2i"], best["i2t"], rho))
    region = {"region_weight": rho} if trained is not None else {}
    return {"shares": best, **region, **camp, "candidates": candidates, "val_two_stage": final,
            "val_global": recall(g_i2t, g_t2i),
            "calibration": {d: {k: [round(v, 4) for v in calib[di, ki].tolist()] for ki, k in enumerate(KINDS)}
                            for di, d in enumerate(DIRECTIONS)},
            "trials": trials}
