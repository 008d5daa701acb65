"""Report files (JSON, Markdown, HTML) and plots: confusion matrices, ROC curves, training curves."""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from .calibrate import temperature_note  # noqa: E402


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path) -> None:
    cm = np.asarray(cm, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, data, title, fmt in (
        (axes[0], cm, "counts", "{:.0f}"),
        (axes[1], normalised, "row-normalised (sensitivity on the diagonal)", "{:.2f}"),
    ):
        im = ax.imshow(data, cmap="Blues", vmin=0)
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set(
            xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes
        )
        ax.set(xlabel="predicted", ylabel="true", title=title)
        threshold = data.max() / 2 if data.max() > 0 else 1
        for i in range(len(classes)):
            for j in range(len(classes)):
                colour = "white" if data[i, j] > threshold else "black"
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", color=colour)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_roc(y: np.ndarray, prob: np.ndarray, classes: list[str], aucs: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for i, c in enumerate(classes):
        positive = y == i
        if positive.any() and not positive.all():
            fpr, tpr, _ = roc_curve(positive, prob[:, i])
            ax.plot(fpr, tpr, label=f"{c} (AUC {aucs[c]:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set(
        xlabel="1 - specificity",
        ylabel="sensitivity",
        title="ROC, one class vs rest",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training_curves(metrics_csv: Path, path: Path) -> bool:
    if not metrics_csv.is_file():
        return False
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return False
    epoch = [int(r["epoch"]) for r in rows]

    def col(name):
        return [float(r[name]) for r in rows]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(epoch, col("train_loss"), label="train")
    ax1.plot(epoch, col("val_loss"), label="validation")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax1.legend()
    for name, label in (
        ("train_accuracy", "train accuracy"),
        ("val_accuracy", "val accuracy"),
        ("val_balanced_accuracy", "val balanced accuracy"),
        ("val_macro_auc", "val macro-AUC"),
    ):
        ax2.plot(epoch, col(name), label=label)
    ax2.set(xlabel="epoch", ylim=(0, 1), title="metrics")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def _ci(ci) -> str:
    return "" if not ci or ci[0] is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def markdown(report: dict) -> str:
    m, ci, classes = report["metrics"], report["confidence_intervals"], report["classes"]
    lines = [
        f"# eyescreen evaluation: {report['split']} split, per {report.get('level', 'eye')}",
        "",
        f"- checkpoint: `{report['checkpoint']}` ({_which_model(report)})",
        f"- data: `{report['data']}`, {m['n']} {'patients' if report.get('level') == 'patient' else 'images from ' + str(report['n_patients']) + ' patients'}",
        f"- 95% confidence intervals: bootstrap over patients, {ci['n_resamples']} resamples",
        *(
            [
                f"- {report.get('patient_note') or 'per-eye metrics of this both-eye model: [eyes/report.md](eyes/report.md)'}"
            ]
            if report.get("level") == "patient"
            else []
        ),
        *(f"- {note}" for note in report.get("notes", [])),
        *(
            [
                f"- test-time augmentation: the logits averaged over {report['test_time_augmentation']}; the "
                "checkpoint's temperature and thresholds were fitted without it"
            ]
            if report.get("test_time_augmentation", "none") != "none"
            else []
        ),
        *(
            [
                f"- the table and the confusion matrix name each {report.get('level', 'eye')}'s most probable "
                'class; `predict` names the decision rule\'s (section "Decision rule" below)'
            ]
            if report.get("decision")
            else []
        ),
        "",
        "| metric | value | 95% CI |",
        "|---|---|---|",
    ]
    for key in ("accuracy", "balanced_accuracy", "macro_auc"):
        lines.append(f"| {key.replace('_', ' ')} | {_fmt(m[key])} | {_ci(ci.get(key)).strip()} |")
    for key in ("macro_f1", "cohen_kappa", "ece"):
        label = {"macro_f1": "macro F1", "cohen_kappa": "Cohen's kappa", "ece": "expected calibration error"}[
            key
        ]
        lines.append(f"| {label} | {_fmt(m[key])} | |")
    lines += ["", "## Per class", "", "| class | n | precision | sensitivity | specificity | F1 | ROC-AUC |"]
    lines.append("|---|---|---|---|---|---|---|")
    for c in classes:
        p = m["per_class"][c]
        lines.append(
            f"| {c} | {p['support']} | {_fmt(p['precision'])} | {_fmt(p['sensitivity'])} | "
            f"{_fmt(p['specificity'])} | {_fmt(p['f1'])} | {_fmt(p['roc_auc'])} |"
        )
    if report.get("calibration"):
        c = report["calibration"]
        lines += ["", "## Calibration and screening operating point", ""]
        lines.append(f"- temperature (fitted on validation): {c['temperature']:.3f}; "
                     f"ECE before {c['ece_before']:.3f}, after {c['ece_after']:.3f}; log-loss (what the "
                     f"temperature minimises on validation) before {c['log_loss_before']:.3f}, after "
                     f"{c['log_loss_after']:.3f}")  # fmt: skip
        if note := temperature_note(c["temperature"]):
            lines.append(f"- {note[0].upper()}{note[1:]}")
        if "referable" in c:
            r = c["referable"]
            lines.append(
                f"- referable (any disease) when 1 - P({r['normal_class']}) > {r['threshold']:.3f} "
                f"(threshold set for 90% specificity on validation): sensitivity {_fmt(r['sensitivity'])}, "
                f"specificity {_fmt(r['specificity'])} on this split"
            )
    if report.get("decision"):
        d = report["decision"]
        dm, dci = d["metrics"], d["confidence_intervals"]
        lines += ["", "## Decision rule used by predict and serve", ""]
        lines.append(
            f"- predicted class = argmax of P(class) x prior^-{d['prior_power']:.2f} (chosen on validation: "
            f"balanced accuracy {d['val_balanced_accuracy_argmax']:.3f} with plain argmax, "
            f"{d['val_balanced_accuracy']:.3f} with the weights)"
        )
        lines.append(f"- on this split: accuracy {_fmt(dm['accuracy'])} {_ci(dci['accuracy'])}, balanced accuracy "
                     f"{_fmt(dm['balanced_accuracy'])} {_ci(dci['balanced_accuracy'])}, macro F1 {_fmt(dm['macro_f1'])}")  # fmt: skip
        lines.append("- per class sensitivity / specificity: " + "; ".join(
            f"{c} {_fmt(p['sensitivity'])} / {_fmt(p['specificity'])}" for c, p in dm["per_class"].items()))  # fmt: skip
    if report.get("subgroups"):
        from .subgroups import subgroup_table

        groups = report["subgroups"]
        lines += ["", f"## Per subgroup of `{groups['column']}`", ""]
        unit = groups.get("unit", "eyes")
        lines.append(f"- each subgroup's {unit} scored apart; balanced accuracy of the class `predict` names; "
                     "a small subgroup gets a wide interval, not a verdict")  # fmt: skip
        lines += [""] + subgroup_table(groups["rows"], groups["column"], classes, unit)
    lines += ["", "## Confusion matrix (rows: true, columns: predicted)", ""]
    lines.append("| | " + " | ".join(classes) + " |")
    lines.append("|---" * (len(classes) + 1) + "|")
    for c, row in zip(classes, m["confusion_matrix"], strict=True):
        lines.append(f"| **{c}** | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({file})" for name, file in report["plots"].items()]
    if report.get("skipped"):
        lines += ["", "## Images that could not be read", ""] + [f"- {s}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")  # a Markdown link, as the notes write them


def _link_html(match: re.Match) -> str:
    """A note's link in the HTML page: to the other report's page rather than its Markdown."""
    target = re.sub(r"report\.md$", "report.html", match[2])
    return f'<a href="{target}">{match[1]}</a>'


def html_page(report: dict, md_text: str) -> str:
    """A self-contained readable page: the Markdown tables rendered as HTML tables, plots inline."""
    body, table = [], []

    def flush():
        if table:
            cells = [
                [c.strip() for c in row.strip("|").split("|")] for row in table if not set(row) <= set("|-")
            ]
            head, *rest = cells
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
            body.extend(
                "<tr>" + "".join(f"<td>{html.escape(c.strip('*'))}</td>" for c in r) + "</tr>" for r in rest
            )
            body.append("</table>")
            table.clear()

    for line in md_text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("- "):
            text = LINK.sub(_link_html, html.escape(line[2:]).replace("`", ""))  # the notes' [name](file)
            body.append(f"<p>{text}</p>")
    flush()
    body += [f'<figure><img src="{html.escape(f)}" alt="{html.escape(n)}"><figcaption>{html.escape(n)}</figcaption></figure>'
             for n, f in report["plots"].items()]  # fmt: skip
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
        "th{background:#f0f4f8}img{max-width:100%}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>eyescreen report</title><style>{style}</style></head><body>{''.join(body)}</body></html>"


def write_report(
    out_dir: Path, report: dict, y: np.ndarray, prob: np.ndarray, metrics_csv: Path | None
) -> dict:
    """Write report.json, report.md, report.html and the plots; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    classes, m = report["classes"], report["metrics"]
    plot_confusion(np.array(m["confusion_matrix"]), classes, out_dir / "confusion_matrix.png")
    plots = {"confusion matrix": "confusion_matrix.png"}
    plot_roc(y, prob, classes, {c: m["per_class"][c]["roc_auc"] for c in classes}, out_dir / "roc_curves.png")
    plots["ROC curves"] = "roc_curves.png"
    if metrics_csv is not None and plot_training_curves(metrics_csv, out_dir / "training_curves.png"):
        plots["training curves"] = "training_curves.png"
    report["plots"] = plots
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    md_text = markdown(report)
    (out_dir / "report.md").write_text(md_text)
    (out_dir / "report.html").write_text(html_page(report, md_text))
    return {
        "json": out_dir / "report.json",
        "markdown": out_dir / "report.md",
        "html": out_dir / "report.html",
    }


def _which_model(report: dict) -> str:
    """The network and the epoch chosen; for an ensemble, its members' networks."""
    if members := report.get("members"):
        return f"an ensemble of {len(members)}: {', '.join(members)}; `eyescreen info` describes each"
    return f"model `{report['model']}`, epoch {report.get('epoch')}"
