"""`fewshot sweep fit`: the fits over a sweep's finished runs, the prediction of the next size,
sweep.json's `fits`, report.md and the plots.

- L(N) and L(D) over the ladder's final validation losses (along a ladder D is N times a
  constant, so the two share an exponent there: the report says so);
- L(C) over the compute frontier: the runs no cheaper run beats;
- per IsoFLOP budget the compute-optimal N* (and D* = C / 6N*), then N*(C) ~ C^a, D*(C) ~ C^b.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fewshot.errors import FewshotError
from fewshot.experiments.scaling.fits import PowerLaw, fit_exponent, fit_power_law, isoflop_optimum
from fewshot.files import atomic_write_text, write_json

# The papers' values the report stands beside (Kaplan et al. 2020 eqs. 1.1-1.3 and 1.7;
# Hoffmann et al. 2022 Table 2, approach 2).
KAPLAN = {"alpha_n": 0.076, "alpha_d": 0.095, "alpha_c": 0.050, "a": 0.73, "b": 0.27}
CHINCHILLA = {"a": 0.49, "b": 0.51, "tokens_per_param": 20.0}


def finished(record: dict[str, Any], kind: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    return sorted(((name, run) for name, run in record["runs"].items()
                   if run["status"] == "done" and (kind is None or run["kind"] == kind)), key=lambda item: item[1]["c"])


def ladder_runs(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return sorted(finished(record, "ladder"), key=lambda item: item[1]["n"])


def frontier(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The finished runs that reach a lower loss than every run with less compute."""
    kept, best = [], math.inf
    for name, run in finished(record):
        if run["val_loss"] < best:
            kept.append((name, run))
            best = run["val_loss"]
    return kept


def _law(fit: PowerLaw, x: str, names: Sequence[str]) -> dict[str, Any]:
    return {"x": x, "alpha": fit.alpha, "alpha_ci95": list(fit.alpha_ci95), "x_c": fit.x_c, "e": fit.e,
            "e_ci95": list(fit.e_ci95), "runs": list(names)}


def fits(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, PowerLaw]]:
    """Every fit the finished runs allow; a fit they do not allow is named with the reason."""
    out: dict[str, Any] = {}
    laws: dict[str, PowerLaw] = {}
    ladder = ladder_runs(record)
    for key, x in (("L(N)", "n"), ("L(D)", "d")):
        try:
            laws[key] = fit_power_law([r[x] for _, r in ladder], [r["val_loss"] for _, r in ladder])
            out[key] = _law(laws[key], x, [name for name, _ in ladder])
        except FewshotError as error:
            out[key] = {"skipped": str(error)}
    edge = frontier(record)
    try:
        laws["L(C)"] = fit_power_law([r["c"] for _, r in edge], [r["val_loss"] for _, r in edge])
        out["L(C)"] = _law(laws["L(C)"], "c", [name for name, _ in edge])
    except FewshotError as error:
        out["L(C)"] = {"skipped": f"{error} on the compute frontier"}
    optima = []
    for budget in sorted({r["budget"] for _, r in finished(record, "isoflop")}):
        runs = [r for _, r in finished(record, "isoflop") if r["budget"] == budget]
        try:
            best = isoflop_optimum([r["n"] for r in runs], [r["val_loss"] for r in runs])
        except FewshotError as error:
            optima.append({"budget": budget, "skipped": str(error)})
            continue
        optima.append({"budget": budget, "n_opt": best.n, "n_opt_ci95": list(best.n_ci95), "d_opt": budget / (6 * best.n),
                       "d_opt_ci95": [budget / (6 * best.n_ci95[1]), budget / (6 * best.n_ci95[0])],
                       "tokens_per_param": budget / (6 * best.n**2), "loss": best.loss, "runs": len(runs)})
    out["isoflop"] = optima
    found = [o for o in optima if "n_opt" in o]
    if len(found) >= 2:
        n_law = fit_exponent([o["budget"] for o in found], [o["n_opt"] for o in found])
        d_law = fit_exponent([o["budget"] for o in found], [o["d_opt"] for o in found])
        out["N_opt(C)"] = {"a": n_law.a, "a_ci95": list(n_law.a_ci95), "k": n_law.k}
        out["D_opt(C)"] = {"b": d_law.a, "b_ci95": list(d_law.a_ci95), "k": d_law.k}
    out["papers"] = {"kaplan": KAPLAN, "chinchilla": CHINCHILLA}
    return out, laws


def predict_next(record: dict[str, Any], n_next: float, name: str) -> dict[str, Any]:
    """L(N) over the finished ladder, extrapolated to the next rung, with a 95% interval."""
    ladder = ladder_runs(record)
    law = fit_power_law([r["n"] for _, r in ladder], [r["val_loss"] for _, r in ladder])
    loss, interval = law.predict(n_next)
    return {"name": name, "n": n_next, "val_loss": loss, "ci95": list(interval), "fitted_on": [n for n, _ in ladder],
            "alpha": law.alpha}


def checked_predictions(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored predictions, each with the measurement beside it once its run has finished."""
    checked = []
    for prediction in record.get("predictions", {}).values():
        run = record["runs"].get(prediction["name"])
        if run is not None and run["status"] == "done":
            measured = run["val_loss"]
            low, high = prediction["ci95"]
            prediction = {**prediction, "measured": measured, "error": (prediction["val_loss"] - measured) / measured,
                          "inside": low <= measured <= high}
        checked.append(prediction)
    return sorted(checked, key=lambda p: p["n"])


def write(out: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Fit, then write sweep.json's `fits`, report.md and the plots; return the fits."""
    from fewshot.experiments.scaling.plots import plot_fewshot, plot_isoflop, plot_laws

    summary, laws = fits(record)
    predictions = checked_predictions(record)
    record["fits"] = summary
    write_json(out / "sweep.json", record)
    plots = [plot_laws(out / "laws.png", record, laws, predictions)]
    if finished(record, "isoflop"):
        plots.append(plot_isoflop(out / "isoflop.png", record, summary))
    if any("fewshot" in r for _, r in finished(record)):
        plots.append(plot_fewshot(out / "fewshot.png", record))
    atomic_write_text(out / "report.md", _markdown(record, summary, predictions, [p.name for p in plots]))
    return summary


def _ci(interval: Sequence[float], digits: int = 3) -> str:
    return f"[{interval[0]:.{digits}g}, {interval[1]:.{digits}g}]"


def _markdown(record: dict[str, Any], summary: dict[str, Any], predictions: list[dict[str, Any]], plots: list[str]) -> str:
    config = record["config"]
    lines = ["# Scaling sweep", "",
             f"Data `{config['data']}`, context {config['context']}, {config['batch_size']} sequences per step, "
             f"seed {config['seed']}. N counts non-embedding parameters (Kaplan); C = 6ND. MFU is the model FLOPs "
             f"(every matmul, the head and attention included) per second over this machine's measured "
             f"{record.get('peak_gflops', float('nan')):.0f} GFLOP/s matmul peak.", "",
             "| run | kind | shape | N | N total | D | D/N | C = 6ND | wall s | MFU | val loss |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, run in sorted(record["runs"].items(), key=lambda item: (item[1]["kind"], item[1]["budget"] or 0, item[1]["n"])):
        kind = run["kind"] if run["budget"] is None else f"{run['kind']} {run['budget']:.3g}"
        measured = (f"{run['seconds']:.0f} | {run.get('mfu', float('nan')):.1%} | {run['val_loss']:.4f}"
                    if run["status"] == "done" else f"{run['status']} | |")
        lines.append(f"| {name} | {kind} | {run['n_layer']}x{run['d_model']} | {run['n']:,} | {run['n_total']:,} | "
                     f"{run['d']:,} | {run['d'] / run['n']:.1f} | {run['c']:.3g} | {measured} |")
    lines += ["", "## Fits (95% bootstrap intervals)", "",
              "| law | exponent | E (irreducible) | fitted on | Kaplan et al. 2020 |", "|---|---|---|---|---|"]
    papers = {"L(N)": f"α_N = {KAPLAN['alpha_n']}", "L(D)": f"α_D = {KAPLAN['alpha_d']}", "L(C)": f"α_C = {KAPLAN['alpha_c']}"}
    for key in ("L(N)", "L(D)", "L(C)"):
        fit = summary[key]
        if "skipped" in fit:
            lines.append(f"| {key} | not fitted: {fit['skipped']} | | | {papers[key]} |")
        else:
            lines.append(f"| {key} | {fit['alpha']:.3f} {_ci(fit['alpha_ci95'])} | {fit['e']:.3f} {_ci(fit['e_ci95'])} | "
                         f"{len(fit['runs'])} runs | {papers[key]} |")
    if not config.get("tokens") and "skipped" not in summary["L(D)"]:
        lines += ["", "Along a ladder every run sees the same tokens per parameter, so D is N times a constant and "
                  "L(D) restates L(N) with the same exponent; Kaplan's α_D comes from large models trained on "
                  "limited data, which a ladder does not vary."]
    elif config.get("tokens"):
        lines += ["", f"Every ladder size trained on the same {config['tokens']:,.0f} tokens (Kaplan's L(N) regime), so "
                  "this sweep has no L(D)."]
    if summary["isoflop"]:
        lines += ["", "## IsoFLOP profiles (Hoffmann et al. 2022, approach 2)", "",
                  "| budget C | N* | D* = C/6N* | D*/N* | L* | runs |", "|---:|---|---|---:|---:|---:|"]
        for o in summary["isoflop"]:
            if "skipped" in o:
                lines.append(f"| {o['budget']:.3g} | not found: {o['skipped']} | | | | |")
            else:
                lines.append(f"| {o['budget']:.3g} | {o['n_opt']:,.0f} {_ci(o['n_opt_ci95'])} | {o['d_opt']:,.0f} "
                             f"{_ci(o['d_opt_ci95'])} | {o['tokens_per_param']:.1f} | {o['loss']:.4f} | {o['runs']} |")
        if "N_opt(C)" in summary:
            a, b = summary["N_opt(C)"], summary["D_opt(C)"]
            lines += ["", f"N*(C) ~ C^{a['a']:.2f} {_ci(a['a_ci95'], 2)} and D*(C) ~ C^{b['b']:.2f} {_ci(b['b_ci95'], 2)}; "
                      f"Chinchilla: a = {CHINCHILLA['a']}, b = {CHINCHILLA['b']}, about {CHINCHILLA['tokens_per_param']:.0f} "
                      f"tokens per parameter; Kaplan: a = {KAPLAN['a']}, b = {KAPLAN['b']}."]
    if predictions:
        lines += ["", "## Predictions made before training"]
    for prediction in predictions:
        lines += ["", f"L(N) fitted on {', '.join(prediction['fitted_on'])} (α_N = {prediction['alpha']:.3f}) predicted "
                  f"{prediction['name']} (N = {prediction['n']:,.0f}) at {prediction['val_loss']:.4f} {_ci(prediction['ci95'], 4)}."]
        if "measured" in prediction:
            lines.append(f"Measured: {prediction['measured']:.4f}, {prediction['error']:+.2%} off "
                         f"({'inside' if prediction['inside'] else 'outside'} the interval).")
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)
