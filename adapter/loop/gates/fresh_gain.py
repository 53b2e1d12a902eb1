"""A gain on the fresh test set, large enough and significant: McNemar's exact test on the rows where the two
versions disagree (one-sided: the question is whether the candidate is better), with a minimum sample below
which nothing is concluded."""

from __future__ import annotations

from pydantic import Field
from scipy.stats import binomtest

from adapter.loop.gates.base import Evidence, Gate, GateConfig
from tuneloop.registry import GateResult


class FreshGainConfig(GateConfig):
    min_gain: float = Field(0.02, ge=0, le=1, description="accuracy points the candidate must gain")
    alpha: float = Field(0.05, gt=0, lt=1, description="McNemar's significance level")
    min_examples: int = Field(40, ge=1, description="fresh test rows below which the gain cannot be judged")


class FreshGainGate(Gate):
    name = "fresh_gain"
    Config = FreshGainConfig

    def judge(self, evidence: Evidence) -> GateResult:
        fresh, config = evidence.fresh, self.config
        before, after = fresh.accuracy("production"), fresh.accuracy("candidate")
        production_right = fresh.production == fresh.labels
        candidate_right = fresh.candidate == fresh.labels
        lost = int((production_right & ~candidate_right).sum())
        won = int((~production_right & candidate_right).sum())
        # Only the discordant rows carry evidence; under "no difference" each is a fair coin.
        p_value = float(binomtest(won, won + lost, 0.5, alternative="greater").pvalue) if won + lost else 1.0
        figures = {"n": len(fresh), "production": round(before, 4), "candidate": round(after, 4),
                   "gain": round(after - before, 4), "won": won, "lost": lost, "p_value": round(p_value, 5),
                   "min_gain": config.min_gain, "alpha": config.alpha}
        reasons = []
        if len(fresh) < config.min_examples:
            reasons.append(f"{len(fresh)} fresh test examples; at least {config.min_examples} are needed to judge")
        if after - before < config.min_gain - 1e-9:  # a gain of exactly min_gain passes, float noise or not
            reasons.append(f"gain {after - before:+.3f} on the fresh test set; at least {config.min_gain:+.3f} needed")
        elif p_value >= config.alpha:
            reasons.append(f"the gain is not significant: McNemar p = {p_value:.3f} (won {won}, lost {lost}); "
                           f"needs p < {config.alpha:g}")
        return GateResult(name=self.name, passed=not reasons, figures=figures, reasons=reasons)
