"""The study's result in words, read from the storage alone: report.md and report.html (one
self-contained file, plots inlined as PNG), written with summary.json (autoft.summary), and the
summary on screen.

The best trial is the best *feasible* complete trial (retention at or above the bar when a base
task is set); the default config's score stands beside it, its retention is the audit's (data the
search never checked), and a table shows the best score each retention bar allows.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import optuna

from autoft.describe import (
    PER_CLASS_COLUMNS,
    describe_details,
    describe_numbers,
    describe_params,
    describe_seconds,
    describe_settings,
    metric_words,
    per_class_rows,
    percent,
)
from autoft.files import write_text_whole
from autoft.plots import study_plots
from autoft.pruning import NOISE_ERRORS
from autoft.record import TrialRecord
from autoft.summary import write_summary
from autoft.trials import full_params, trial_seconds


def default_forgot(summary: dict) -> str:
    """', but kept only 88% of the base skill, below the 95% bar' when the default config forgot
    too much to be reported as best; '' otherwise."""
    bar = summary.get("base", {}).get("min_retention")
    kept = (summary.get("default") or {}).get("retention")
    if bar is None or kept is None or kept >= bar:
        return ""
    return f" but kept only {kept:.1%} of the base skill, below the {percent(bar)} bar"


def gain_words(summary: dict) -> str:
    """Whether the answer beats the default config beyond the validation noise (NOISE_ERRORS
    standard errors of the default's score): a user should know when tuning bought nothing the
    validation set can tell apart. '' when the default is the answer or has no score."""
    best, default = summary["best"], summary.get("default")
    if (not default or default["number"] == best["number"] or default.get("value") is None
            or not default.get("standard_error")):
        return ""
    sign = -1 if summary.get("direction") == "minimize" else 1
    gain = sign * (best["value"] - default["value"])
    noise = NOISE_ERRORS * default["standard_error"]
    if gain > noise:
        return (f"That beats the default config by {gain:.4f}, beyond the validation noise "
                f"(±{noise:.4f}: {NOISE_ERRORS} standard errors of its score).")
    return (f"Tuning did not beat the default config beyond the validation noise ({gain:+.4f} "
            f"against ±{noise:.4f}, {NOISE_ERRORS} standard errors of its score): on this "
            f"validation set the default config is as good an answer.")


def default_score(summary: dict) -> str:
    """'0.6123', or '0.6123 when it was stopped early (forgetting: ...)' for a pruned default."""
    default = summary["default"]
    if default.get("value") is None:
        return "no score (it stopped before its first evaluation)"
    if default.get("stopped"):
        return f"{default['value']:.4f} when it was stopped early ({default['stopped']})"
    return f"{default['value']:.4f}"


def audit_words(entry: dict, base: dict) -> str:
    """'96.1% of the base model's similarity skill on 25 held-out documents the search never
    checked (95% interval 91.2%–100.3%)'; '' when the trial was not audited."""
    audit = entry.get("audit")
    if not audit:
        return ""
    where = (f"{audit['units']} held-out {audit['unit']} the search never checked"
             if audit["held_out"] else f"all {audit['units']} {audit['unit']} (too few to hold "
             f"some back, so the search checked them too)")
    return (f"{audit['retention']:.1%} of the base model's {base.get('kind', 'base')} skill on "
            f"{where} (95% interval {audit['low']:.1%}–{audit['high']:.1%})")


def straddle_words(entry: dict, base: dict) -> str:
    """A sentence when the search's check of the answer cannot tell it from below the bar (its
    interval reaches under it); '' otherwise."""
    interval, bar = entry.get("retention_interval"), base.get("min_retention")
    if not interval or bar is None or interval[0] >= bar:
        return ""
    return (f"Its check's 95% interval, {interval[0]:.1%}–{interval[1]:.1%}, reaches below the "
            f"{percent(bar)} bar: the base data cannot tell whether it keeps that much; more base "
            f"items would.")


def price_lines(summary: dict) -> list[str]:
    """The price table as aligned text lines, for the screen."""
    rows = price_rows(summary)
    if not rows:
        return []
    widths = [max(len(row[i]) for row in [PRICE_COLUMNS, *rows]) for i in range(4)]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths,
                                                                      strict=True))
            + ("  " + row[4] if row[4] else "") for row in [PRICE_COLUMNS, *rows]]


PRICE_COLUMNS = ["retention kept", "best score", "vs no bar", "trial", "config"]


def price_rows(summary: dict) -> list[list[str]]:
    """One row per bar: the bar, the best score it allows, what it costs against no bar, the
    trial and its config in words."""
    price = summary.get("price") or []
    free = price[-1]["value"] if price else None
    rows = []
    for row in price:
        bar = "no bar" if row["bar"] is None else f"≥ {row['bar']:.2f}"
        if row["users_bar"]:
            bar += " (your bar)"
        if row["value"] is None:
            rows.append([bar, "none reached it", "", "", ""])
            continue
        value = f"{row['value']:.4f}" + (" (pruned)" if row["how"] == "pruned" else "")
        cost = "" if row["bar"] is None else f"{row['value'] - free:+.4f}"
        rows.append([bar, value, cost, str(row["number"]), row["config"]])
    return rows


def improvement(summary: dict, best: float, default: float) -> str:
    """How much better `best` is than `default`, in the metric's direction."""
    if summary.get("direction") == "minimize":
        return f"lowered it by {default - best:.4f}"
    return f"gained {best - default:+.4f}"


def counts_words(counts: dict) -> str:
    """'6 completed, 1 pruned, 1 failed' and, when some were, how many were interrupted."""
    words = f"{counts['complete']} completed, {counts['pruned']} pruned, {counts['failed']} failed"
    if counts.get("interrupted"):
        words += f", {counts['interrupted']} interrupted (their configs run again on resume)"
    return words


def nothing_to_show(summary: dict) -> str | None:
    """Why a study has no best config, with the fix, in one sentence; None when it has one."""
    if summary["best"] is not None:
        return None
    c, study = summary["counts"], summary["study"]
    if summary.get("base") and c["complete"] + c["pruned"]:
        bar = summary["base"]["min_retention"]
        return (f"Study '{study}': no trial kept {percent(bar)} of the base-task skill; lower "
                f"--min-retention (the report's price of the bar shows what each bar allows) "
                f"or {more_trials(summary)}.")
    if c["failed"] and not c["complete"] + c["pruned"]:
        reason, times = next(iter(summary["failures"].items()))
        return (f"Study '{study}': no trial completed; {c['failed']} failed, {times} of them "
                f"with \"{reason}\"; fix that cause (each trial's log is in the study's logs/ "
                f"folder) and {more_trials(summary)}.")
    if c["pruned"] and not c["complete"]:
        return (f"Study '{study}': every trial was stopped early (pruned), so none has a final "
                f"score; {more_trials(summary)}, or raise --pruner-startup-trials.")
    return f"Study '{study}': no trial completed yet, so there is no best config."


def more_trials(summary: dict) -> str:
    """How to run new trials: the same command while the budget has room; once the trials
    (failed ones too) used it, the same command runs none, so the flag and the number."""
    c, n_trials = summary["counts"], summary.get("n_trials")
    used = c["complete"] + c["pruned"] + c["failed"]
    if n_trials is None or used < n_trials:
        return "run the same command again"
    return (f"run the same command with --n-trials {used + n_trials} (its {used} trials used the "
            f"budget of {n_trials}, so the same command would run none)")


def soup_lines(summary: dict) -> list[str]:
    """What the greedy soup of the best trials came to, in sentences; [] when none was tried."""
    soup, base = summary.get("soup"), summary.get("base") or {}
    if not soup:
        return []
    metric = metric_words(summary["metric"], summary.get("direction"))
    if not soup["answer"]:
        if soup["won"]:
            return [f"The soup of trials {describe_numbers(soup['members'])} is no longer the "
                    f"answer: a trial finished since scored better (`autoft search` tries a new "
                    f"soup)."]
        return [f"A soup of the best {len(soup['candidates'])} feasible trials (trials "
                f"{describe_numbers(soup['candidates'])}, weights averaged, each added only while "
                f"validation improved and the bar held) did not beat the best trial "
                f"(tried in {soup['seconds']:.1f} s)."]
    line = (f"Best: a soup of trials {describe_numbers(soup['members'])} (weights averaged): "
            f"{metric} {soup['value']:.4f}, against {soup['best_value']:.4f} for the best single "
            f"trial ({soup['best_trial']})")
    audited = audit_words(soup, base)
    if base.get("noise"):
        line += f"; retention not stated: {base['noise']}"
    elif audited:
        line += f"; it keeps {audited}"
    elif soup.get("retention") is not None:
        line += f"; it keeps {soup['retention']:.1%} of the base model's {base.get('kind')} skill"
    straddle = straddle_words(soup, base)
    return [line + f". It is the exported model (found in {soup['seconds']:.1f} s)."
            + (f" {straddle}" if straddle else "")]


def summary_text(summary: dict) -> str:
    """The few lines a person reads in the morning."""
    metric, depth = metric_words(summary["metric"], summary.get("direction")), summary["depth"]
    lines = [f"Study '{summary['study']}': {counts_words(summary['counts'])}, in "
             f"{describe_seconds(summary['seconds'])}."]
    if summary.get("precision"):
        lines.append(f"Trials computed in {' and '.join(summary['precision'])} "
                     f"(--precision: auto, bf16 or fp32).")
    best, default = summary["best"], summary["default"]
    if best is None:
        lines.append(nothing_to_show(summary))
        least = summary.get("least_forgetful")
        if least:
            lines.append(
                f"The least forgetful was trial {least['number']}: "
                f"{metric} {least['value']:.4f}, retention {least['retention']:.3f}."
            )
        return "\n".join(lines)
    lines += soup_lines(summary)
    single = ", the best single trial" if (summary.get("soup") or {}).get("answer") else ""
    lines.append(f"Best config (trial {best['number']}){single}: "
                 f"{describe_params(best['params'], depth)}.")
    score = f"  {metric} {best['value']:.4f}"
    if default is not None:
        score += f" (the default config scored {default_score(summary)}{default_forgot(summary)})"
    lines.append(score)
    if gain_words(summary):
        lines.append(f"  {gain_words(summary)}")
    if describe_details(best.get("score_details")):
        lines.append(f"  {describe_details(best['score_details'])}")
    if best.get("retention") is not None:
        base = summary["base"]
        audited = audit_words(best, base)
        checked = f"{base['name']} {best['base_score']:.4f} vs {base['score']:.4f}"
        if base.get("noise"):
            lines.append(f"  retention not stated: {base['noise']}")
        elif audited:
            lines.append(f"  keeps {audited};")
            lines.append(f"  the search's own check said {best['retention']:.1%} ({checked})")
        else:
            lines.append(f"  keeps {best['retention']:.1%} of the base model's {base['kind']} "
                         f"skill ({checked})")
        if straddle_words(best, base):
            lines.append(f"  {straddle_words(best, base)}")
    if summary.get("price"):
        lines.append(f"The best {metric} at each retention bar (the price of the bar):")
        lines += price_lines(summary)
    return "\n".join(lines)


def answer_lines(summary: dict) -> list[str]:
    """The best config, its score against the default's and its retention, in sentences."""
    metric = metric_words(summary["metric"], summary.get("direction"))
    best, default = summary["best"], summary["default"]
    base = summary.get("base")
    if best is None:
        return summary_text(summary).splitlines()[1:]
    top = best.get("mixed_from") == "top"
    mixed = top or best.get("mix") not in (None, 1.0)
    weights = "its best-scoring weights (which forgot too much as they were)" if top else (
        "the weights")
    single = ", the best single trial" if (summary.get("soup") or {}).get("answer") else ""
    lines = [
        f"Best config (trial {best['number']}){single}: "
        f"{describe_params(best['params'], summary['depth'])}"
        + (f", keeping {weights} {best['mix']:.0%} of the way from the untouched to the tuned "
           f"ones." if mixed else ".")
    ]
    score = f"It reached a validation {metric} of {best['value']:.4f}"
    if default is None:
        score += "; the default config has no finished score to compare with."
    elif default["number"] == best["number"]:
        score += ", and it is the default config: no other config found did better."
    elif default.get("stopped"):
        gain = best["value"] - default["value"]
        score += (
            f"; the default config (trial {default['number']}) was stopped early "
            f"({default['stopped']}) when it had reached {default['value']:.4f}; the best "
            f"config's score differs from that by {gain:+.4f}."
        )
    elif default_forgot(summary):
        score += (
            f"; the default config (trial {default['number']}) reached {default['value']:.4f}"
            f"{default_forgot(summary)}, so it could not be the answer."
        )
    else:
        score += (
            f"; the default config (trial {default['number']}) reached {default['value']:.4f}, "
            f"so tuning {improvement(summary, best['value'], default['value'])}."
        )
    lines.append(score)
    details = details_line(summary)
    if details:
        lines.append(details)
    if best.get("retention") is not None and base:
        audited = audit_words(best, base)
        checked = (f"{base.get('name', 'score')} {best['base_score']:.4f} against "
                   f"{base.get('score', float('nan')):.4f} before tuning; the bar was "
                   f"{percent(base.get('min_retention', 0))}")
        if base.get("noise"):
            lines.append(f"Its retention is not stated: {base['noise']}.")
        elif audited:
            lines.append(f"It keeps {audited}. The search's own check, which chose it, said "
                         f"{best['retention']:.1%} ({checked}).")
        else:
            lines.append(f"It keeps {best['retention']:.1%} of the base model's "
                         f"{base.get('kind', 'base')} skill ({checked}).")
        if straddle_words(best, base):
            lines.append(straddle_words(best, base))
        default_audit = audit_words(default, base) if default else ""
        if default_audit and default["number"] != best["number"]:
            lines.append(f"The default config keeps {default_audit}.")
        note = (base.get("audit_part") or {}).get("note")
        if note:
            lines.append(f"Note: {note}.")
        preserved = base.get("preserve_on")
        if preserved and best["params"].get("preserve_weight"):
            lines.append(f"Its preservation loss (×{best['params']['preserve_weight']:g}) held "
                         f"the model's output near the untouched model's on {preserved['words']}.")
    elif base:
        lines.append("Its base-task retention was not recorded.")
    else:
        lines.append(
            "Forgetting was NOT checked: this study has no base task (base: none, or a model "
            "autoft has no general data for), so nothing says what tuning cost the model's "
            "earlier skills; leave base out (the default check) or set --base-kind and "
            "--base-data to check it."
        )
    soup = soup_lines(summary)
    return soup + lines if (summary.get("soup") or {}).get("answer") else lines + soup


def details_line(summary: dict) -> str:
    """The best config's validation precision and recall beside its score, and the default
    config's; '' where none were recorded (regression, older studies)."""
    best, default = summary["best"], summary["default"] or {}
    words = describe_details(best.get("score_details"))
    if not words:
        return ""
    line = f"At it, its validation {words}"
    if default.get("number") != best["number"] and describe_details(default.get("score_details")):
        line += f"; the default config's: {describe_details(default['score_details'])}"
    return line + "."


def setting_lines(study: optuna.Study, summary: dict) -> list[str]:
    """What autoft chose on the user's behalf, and why."""
    lines = [f"chose {note}" for note in summary.get("notes") or []]
    settings = study.user_attrs.get("settings")
    if settings:
        lines.append(f"used {describe_settings(settings)}")
    return lines or ["Every setting came from the study file or the flags."]


def trial_rows(study: optuna.Study) -> list[list[str]]:
    """One row per trial: number, state, value, config, retention, reason, seconds."""
    depth = study.user_attrs.get("depth") or 0
    rows = []
    for t in study.get_trials(deepcopy=False):
        record = TrialRecord.of(t)
        retention = record.retention
        seconds = trial_seconds(t)
        rows.append(
            [
                str(t.number),
                t.state.name.lower(),
                f"{t.value:.4f}" if t.value is not None else "",
                describe_params(full_params(t), depth, record.mix, short=True),
                f"{retention:.3f}" if retention is not None else "",
                next((reason for reason in (record.fail_reason, record.prune_reason,
                                            record.stop_reason) if reason), ""),
                f"{seconds:.0f}" if seconds is not None else "",
            ]
        )
    return rows


TRIAL_COLUMNS = ["trial", "state", "value", "config", "retention", "reason", "seconds"]


def report_blocks(study: optuna.Study, summary: dict, plots: list) -> list[tuple]:
    """The report as a list of blocks that both the Markdown and the HTML writer render."""
    attrs = study.user_attrs
    c = summary["counts"]
    blocks: list[tuple] = [
        ("h1", f"autoft report: study '{summary['study']}'"),
        ("p", f"Model: {attrs.get('model', 'unknown')}. "
              f"Data: {attrs.get('data_description', 'unknown')}."),
        ("h2", "The answer"),
        *[("p", line) for line in answer_lines(summary)],
    ]
    per_class = per_class_rows((summary["best"] or {}).get("score_details"))
    if per_class:
        blocks += [
            ("h2", "Per class"),
            ("p", "The best config's validation precision, recall and F1 for each class, and "
                  "how many validation rows have it (support)."),
            ("table", PER_CLASS_COLUMNS, per_class),
        ]
    if summary.get("price"):
        blocks += [
            ("h2", "The price of the bar"),
            ("p", f"The best validation {summary['metric']} the search found at each retention "
                  f"bar, with the retention the search measured: a pruned trial counts at the "
                  f"score and quick-check retention it had when it was stopped. 'vs no bar' is "
                  f"what the bar costs."),
            ("table", PRICE_COLUMNS, price_rows(summary)),
        ]
    blocks += [
        ("h2", "How the search went"),
        ("p", f"Trials: {counts_words(c)}, in {describe_seconds(summary['seconds'])}. Pruned "
              f"trials were stopped early; failed ones failed for a reason of their own (the "
              f"table below gives it)."),
        ("h2", "What autoft chose for you"),
        ("ul", setting_lines(study, summary)),
        ("h2", "Plots"),
        *[("plot", plot) for plot in plots],
        ("h2", "Every trial"),
        ("table", TRIAL_COLUMNS, trial_rows(study)),
    ]
    return blocks


def render_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *content in blocks:
        if kind in ("h1", "h2"):
            out.append(f"{'#' * int(kind[1])} {content[0]}\n")
        elif kind == "p":
            out.append(f"{content[0]}\n")
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in content[0]) + "\n")
        elif kind == "plot":
            plot = content[0]
            where = "(the plot is in report.html)" if plot.png else ""
            out.append(f"### {plot.title}\n\n{plot.text} {where}".rstrip() + "\n")
        elif kind == "table":
            header, rows = content
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in rows]
            out.append("\n".join(lines) + "\n")
    return "\n".join(out)


STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#222}h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;margin-top:2rem}
figure{margin:1rem 0}img{max-width:100%;height:auto}figcaption{color:#555;font-size:.9rem}
table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ddd;padding:.25rem .5rem;
text-align:left}tr:nth-child(even){background:#f6f6f6}"""


def render_html(blocks: list[tuple]) -> str:
    esc = html.escape
    title = next(content[0] for kind, *content in blocks if kind == "h1")
    out = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>',
        f"<style>{STYLE}</style></head><body>",
    ]
    for kind, *content in blocks:
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{esc(content[0])}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in content[0]) + "</ul>")
        elif kind == "plot":
            plot = content[0]
            out.append(f"<h3>{esc(plot.title)}</h3><figure>")
            if plot.png:
                data = base64.b64encode(plot.png).decode("ascii")
                out.append(f'<img alt="{esc(plot.title)}" src="data:image/png;base64,{data}">')
            out.append(f"<figcaption>{esc(plot.text)}</figcaption></figure>")
        elif kind == "table":
            header, rows = content
            out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows]
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(study: optuna.Study, study_dir: Path) -> dict:
    """summary.json, report.md and report.html in the study folder; returns the summary."""
    summary = write_summary(study, study_dir)
    blocks = report_blocks(study, summary, study_plots(study))
    write_text_whole(study_dir / "report.md", render_markdown(blocks))
    write_text_whole(study_dir / "report.html", render_html(blocks))
    return summary
