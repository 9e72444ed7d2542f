# Copyright 2026 ki_vla_ros maintainers
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""`study.json`, `report.md` and the plots of `ki-vla study`: every measured number beside the paper's claim it
tests, with a plain verdict computed from the numbers (never written by hand)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ki_vla.atomic import write_text_atomic

PAPER = "Driess et al. (2025), Knowledge Insulating Vision-Language-Action Models"


def steps_to(curve: list[dict[str, Any]], target: float) -> int | None:
    """The first evaluated step whose action error is at or below `target` (None: not within the run)."""
    return next((p["step"] for p in curve if p["action_mse"] <= target), None)


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


# A gap between swapped- and true-instruction error smaller than this fraction of the error is not language
# following: an instruction-blind policy's two errors differ by flow-sampling and rounding noise alone (measured on
# the default study: |gap| / error <= 5e-4 for every variant).
LANGUAGE_MIN_GAP = 0.02
# The paper's step-cost figure: about +20% for ki over pi0; within +-0.1 of that ratio counts as agreeing.
PAPER_STEP_RATIO = 1.2


def claims(results: dict[str, dict[str, Any]], target: float) -> list[dict[str, str]]:
    """One row per claim whose variants were run: the claim, what was measured, and a verdict. A claim that needs
    an effect the budget did not produce (no variant beats holding still, none follows the instruction) is
    "not testable at this budget" rather than a disagreement."""
    rows = []

    def have(*names: str) -> bool:
        return all(n in results for n in names)

    kl = {n: r["retention"]["kl"] for n, r in results.items()}
    final = {n: r["curve"][-1]["action_mse"] for n, r in results.items()}
    gap = {n: r["language"]["swapped_mse"] - r["language"]["true_mse"] for n, r in results.items()}
    follows = {n: gap[n] >= LANGUAGE_MIN_GAP * r["language"]["true_mse"] for n, r in results.items()}

    def learned(*names: str) -> bool:
        """Some of these variants predicts better than holding still (the floor a policy must beat to be said to
        have learned the task)."""
        return any(final[n] < results[n].get("hold_still_mse", math.inf) for n in names)

    def gaps(*names: str) -> str:
        return "swapped-minus-true action MSE: " + ", ".join(
            f"{n} {gap[n]:.3g} ({gap[n] / results[n]['language']['true_mse']:+.2%})" for n in names)

    no_language = f"not testable at this budget (no variant's gap reaches {LANGUAGE_MIN_GAP:.0%} of its error)"
    if have("ki", "joint", "pi0"):
        ok = kl["ki"] < min(kl["joint"], kl["pi0"])
        rows.append({"claim": "Training the expert jointly with the VLM (pi0, joint without stop-gradient) erodes the "
                              "VLM's knowledge; insulation keeps it.",
                     "measured": f"KL from pretrained: ki {kl['ki']:.4g}, joint {kl['joint']:.4g}, pi0 {kl['pi0']:.4g}",
                     "verdict": "agrees" if ok else "does not agree"})
    if have("ki", "frozen"):
        verdict = ("not testable at this budget (neither beats holding still)" if not learned("ki", "frozen") else
                   "agrees" if final["frozen"] > final["ki"] else "does not agree")
        rows.append({"claim": "Freezing the backbone fails to learn the task well.",
                     "measured": f"final action MSE: frozen {final['frozen']:.4g}, ki {final['ki']:.4g}",
                     "verdict": verdict})
    if have("ki", "pi0_fast", "pi0"):
        s = {n: steps_to(results[n]["curve"], target) for n in ("ki", "pi0_fast", "pi0")}
        text = ", ".join(f"{n} {s[n] if s[n] is not None else 'not reached'}" for n in s)
        if s["ki"] is None:
            verdict = "not testable at this budget (ki did not reach the target)"
        else:
            verdict = "agrees" if (s["pi0"] is None or s["pi0"] > s["ki"]) else "does not agree"
        rows.append({"claim": "KI converges about as fast as pi0-FAST; pi0 needs about 7.5x more steps.",
                     "measured": f"steps to action MSE <= {target:.4g}: {text}", "verdict": verdict})
    if have("ki", "ki_cotrain"):
        ok_kl = kl["ki_cotrain"] <= kl["ki"]
        testable = follows["ki"] or follows["ki_cotrain"]
        ok_lang = testable and gap["ki_cotrain"] >= gap["ki"]
        if not testable:
            verdict = ("partly: knowledge agrees; language " if ok_kl else "knowledge does not agree; language ") + \
                no_language
        else:
            verdict = ("agrees" if ok_kl and ok_lang else "partly (knowledge only)" if ok_kl else
                       "partly (language only)" if ok_lang else "does not agree")
        rows.append({"claim": "Co-training on vision-language data further protects the VLM and helps language "
                              "following.",
                     "measured": f"KL: ki_cotrain {kl['ki_cotrain']:.4g} vs ki {kl['ki']:.4g}; "
                                 + gaps("ki_cotrain", "ki"),
                     "verdict": verdict})
    if have("ki", "joint", "pi0"):
        if not any(follows[n] for n in ("ki", "joint", "pi0")):
            verdict = no_language
        else:
            verdict = "agrees" if follows["ki"] and gap["ki"] > max(gap["joint"], gap["pi0"]) else "does not agree"
        rows.append({"claim": "Insulated training follows language better than pi0 / joint training.",
                     "measured": gaps("ki", "joint", "pi0"), "verdict": verdict})
    if have("ki", "pi0") and results["ki"]["step_seconds"] and results["pi0"]["step_seconds"]:
        ratio = results["ki"]["step_seconds"] / results["pi0"]["step_seconds"]
        verdict = ("agrees" if abs(ratio - PAPER_STEP_RATIO) <= 0.1 else
                   "does not agree (costlier here)" if ratio > PAPER_STEP_RATIO else "does not agree (cheaper here)")
        rows.append({"claim": "KI costs about 20% more per training step than pi0 (the FAST cross-entropy pass).",
                     "measured": f"ki / pi0 step time: {ratio:.2f}", "verdict": verdict})
    return rows


def plot(results: dict[str, dict[str, Any]], target: float, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    files = []
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].bar(names, [results[n]["retention"]["kl"] for n in names])
    axes[0].set_title("KL from pretrained SmolLM2 (nats/token)")
    axes[1].bar(names, [results[n]["retention"]["cloze_acc"] for n in names])
    axes[1].set_ylim(0, 1.05)
    axes[1].set_title("factual cloze kept (pretrained = 1)")
    x = range(len(names))
    axes[2].bar([i - 0.2 for i in x], [results[n]["language"]["true_mse"] for n in names], 0.4, label="true")
    axes[2].bar([i + 0.2 for i in x], [results[n]["language"]["swapped_mse"] for n in names], 0.4, label="swapped")
    axes[2].set_xticks(list(x), names)
    axes[2].set_title("held-out action MSE by instruction")
    axes[2].legend()
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out / "knowledge_language.png", dpi=110)
    plt.close(fig)
    files.append("knowledge_language.png")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for n in names:
        c = results[n]["curve"]
        axes[0].plot([p["step"] for p in c], [p["action_mse"] for p in c], marker="o", label=n)
        flows = [(p["step"], p["val_flow"]) for p in c if p["val_flow"]]
        if flows:
            axes[1].plot(*zip(*flows), marker="o", label=n)
    axes[0].axhline(target, color="grey", ls="--", label="target")
    axes[0].set_yscale("log")
    axes[0].set_title("held-out action MSE (real units)")
    axes[1].set_title("held-out flow loss")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "learning.png", dpi=110)
    plt.close(fig)
    files.append("learning.png")
    return files


def write(out: Path, settings: dict[str, Any], results: dict[str, dict[str, Any]], target: float,
          command: str) -> dict[str, Any]:
    rows = claims(results, target)
    study = {"settings": settings, "target_mse": target, "variants": results, "claims": rows, "command": command}
    write_text_atomic(out / "study.json", json.dumps(study, indent=2))
    files = plot(results, target, out)
    md = [f"# KI study ({settings['task']}, {settings['steps']} steps per variant)", "",
          f"Command: `{command}`", "",
          f"Paper: {PAPER}. Same data, seeds, step budget and optimizer for every variant; backbone: "
          f"{settings['model']} (pretrained SmolLM2-135M text weights; vision tower random).", "",
          "| variant | KL from pretrained | English NLL change | cloze kept | final action MSE | steps to target | "
          "true / swapped MSE | first-frame true / swapped | step s | peak RSS GiB |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for n, r in results.items():
        lang, ret = r["language"], r["retention"]
        md.append(f"| {n} | {_fmt(ret['kl'])} | {_fmt(ret['english_nll_delta'])} | {_fmt(ret['cloze_acc'], 3)} "
                  f"({r['cloze_kept']} kept of {r['cloze_total']}) | {_fmt(r['curve'][-1]['action_mse'])} | "
                  f"{_fmt(steps_to(r['curve'], target)) if steps_to(r['curve'], target) else 'not reached'} | "
                  f"{_fmt(lang['true_mse'])} / {_fmt(lang['swapped_mse'])} | "
                  f"{_fmt(lang['true_mse_first_frame'])} / {_fmt(lang['swapped_mse_first_frame'])} | "
                  f"{_fmt(r['step_seconds'], 3)} | {_fmt(r.get('peak_rss_gib'), 3)} |")
    md += ["", f"Target action MSE: {target:.4g} = {settings['target_fraction']} x the hold-still error "
               f"({next(iter(results.values()))['hold_still_mse']:.4g}) on the same held-out samples.", "",
           "## The paper's claims against these numbers", "", "| claim | measured here | verdict |", "|---|---|---|"]
    md += [f"| {c['claim']} | {c['measured']} | {c['verdict']} |" for c in rows]
    md += ["", "Small-scale caveats: a few hundred CPU steps on a few dozen demonstrations with a random vision "
               "tower; a verdict here is about this budget, not about the paper's scale.", ""]
    md += [f"![{f}]({f})" for f in files]
    write_text_atomic(out / "report.md", "\n".join(md) + "\n")
    return study
