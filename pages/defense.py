"""Defense view: attack a few images, purify them with the barycenter of their own rotated and
shifted copies, and see what the model predicts and looks at; the AA/BA table; the
sensitivity of the barycenter to its parameters (the paper's figure 1)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch
from plotly.subplots import make_subplots

from core.commands import defend_command, inspect_command, spatial_command
from core.data import CLASS_NAMES, NUM_CLASSES
from core.defense import DefenseConfig
from core.errors import ConfigError, PoisonLabError
from core.evasion import ATTACKS, AttackConfig
from core.experiment import clean_twin, load_trained, model_path, train_or_load
from core.inspection import VERSIONS, inspect, sensitivity_grid, upload_input
from core.jobs import RUNNER
from ui.device import on_session_device
from core.spatial import DEFAULT_TRANSFORMS, KINDS, parse_transforms
from core.robustness import RobustnessConfig, cached_spatial, cached_table, spatial_defense, spatial_path, draw_test_images, model_inputs, robustness_table, table_path
from core.durations import estimate
from core.evasion import attack_step
from ui.common import active_experiment, data_or_stop, expected_time, job_result, run_through_app, settle_job, training_time
from ui.tiles import diverging_rgb, enlarge
from ui.url_state import Choice, Number, remember_view, restore_view

VERSION_TITLES = {"clean": "clean", "attacked": "attacked", "barycenter": "barycenter of the attacked image",
                  "clean_barycenter": "barycenter of the clean image"}
PARAMETER_TITLES = {"gamma": "γ", "theta": "θ", "tau": "τ", "iterations": "iterations", "cost_unit": "cost of one pixel step"}


def controls() -> tuple[str, AttackConfig, DefenseConfig, tuple[float, float]]:
    with st.sidebar:
        st.subheader("Model")
        model = st.radio("Attack the", VIEW["df_model"].options, horizontal=True, key="df_model", persist_state="session",
                         format_func={"poisoned": "poisoned model", "clean": "clean model"}.get,
                         help="The clean model is the same experiment trained without poisoned samples.")
        st.subheader("Attack")
        name = st.selectbox("Attack", list(ATTACKS), format_func=ATTACKS.get, key="df_attack", persist_state="session",
                            help="BPDA is the adaptive attack: PGD through the defense, with the barycenter's gradient taken as the identity.")
        norm = AttackConfig(name=name).norm
        # Both budgets stay on screen: a number input that hides and reappears in the other's place
        # can be handed the other's value by the browser when runs overlap.
        eps_linf = st.number_input("Budget ε (L∞, in 1/255)", *VIEW["df_eps_linf"].bounds, step=0.5, key="df_eps_linf", persist_state="session",
                                   help="For the L∞ attacks (FGSM, PGD L∞, DeepFool L∞, AutoAttack, BPDA) and the AA / BA table's.") / 255
        eps_l2 = st.number_input("Budget ε (L2)", *VIEW["df_eps_l2"].bounds, step=0.05, key="df_eps_l2", persist_state="session",
                                 help="For the L2 attacks (PGD L2, Carlini–Wagner L2) and the AA / BA table's.")
        st.caption(f"{ATTACKS[name]} uses the {'L∞' if norm == 'linf' else 'L2'} budget.")
        eps = eps_linf if norm == "linf" else eps_l2
        seed = st.number_input("Attack seed", *VIEW["df_seed"].bounds, key="df_seed", persist_state="session")
        st.subheader("Defense")
        marginals = st.radio("Marginals", VIEW["df_marginals"].options, horizontal=True, key="df_marginals", persist_state="session",
                             help="B6: the image, rotations by ±2° and ±3°, a 3-pixel shift. B4: the image, ±2°, the shift.")
        with st.expander("Algorithm 1 settings (the paper's by default)"):
            base = DefenseConfig()
            iterations = st.number_input("Iterations", 1, 5000, base.iterations, 50, key="df_iterations", persist_state="session",
                                         help="At θ = 1e5 the barycenter drifts back towards the input as iterations go on: more iterations, weaker defense.")
            gamma = st.number_input("γ (entropic regularisation)", 0.001, 10.0, base.gamma, 0.005, format="%.3f", key="df_gamma", persist_state="session")
            theta = st.number_input("θ (pull towards the input)", 1.0, 1e9, base.theta, format="%.0f", key="df_theta", persist_state="session")
            tau = st.number_input("τ (step)", 0.001, 10.0, base.tau, 0.05, format="%.3f", key="df_tau", persist_state="session")
    try:
        attack = AttackConfig(name=name, eps=float(eps), seed=int(seed))
        defense = DefenseConfig(marginals=marginals, iterations=int(iterations), gamma=float(gamma), theta=float(theta), tau=float(tau))
    except ConfigError as exc:
        st.error(str(exc))
        st.stop()
    return model, attack, defense, (float(eps_linf), float(eps_l2))


def image_source(data) -> tuple[torch.Tensor, torch.Tensor | None, str, str]:
    """Images (B, 3, 32, 32) in [0, 1], their labels (None for an upload), a caption per
    image set, and the CLI's image option."""
    source = st.radio("Images", VIEW["df_source"].options, horizontal=True, key="df_source", persist_state="session",
                      format_func={"test": "GTSRB test images", "upload": "upload your own"}.get)
    if source == "upload":
        left, right = st.columns([2, 1])
        limit = st.get_option("server.maxUploadSize")
        upload = left.file_uploader(f"A PNG or JPEG image of a traffic sign, any size up to {limit} MB (resized to 32 × 32)", key="df_upload",
                                    help=f"A file larger than {limit} MB is refused by the browser before it is sent; any other "
                                         "file is checked here and refused with its reason.")
        label = right.selectbox("Its class (if known)", [None, *range(NUM_CLASSES)], key="df_upload_label", persist_state="session",
                                format_func=lambda c: "unknown: attack the model's prediction" if c is None else f"{c} · {CLASS_NAMES[c]}")
        if upload is None:
            st.info("Choose a file to attack and purify it.")
            st.stop()
        try:
            images = upload_input(upload.getvalue())
        except PoisonLabError as exc:
            st.error(f"{upload.name} cannot be used: {exc}")
            st.stop()
        left.image(enlarge(to_rgb(images[0]), 3), caption=f"{upload.name} as the model sees it (32 × 32)")
        labels = None if label is None else torch.tensor([label])
        return images, labels, upload.name, f"--image {upload.name}"
    left, middle, right = st.columns([2, 1, 1])
    class_id = left.selectbox("Class", VIEW["df_class"].options, key="df_class", persist_state="session",  # not None: a None value shows as no choice
                              format_func=lambda c: "any class" if c == "any" else f"{c} · {CLASS_NAMES[c]}")
    count = middle.number_input("How many", *VIEW["df_count"].bounds, key="df_count", persist_state="session")
    draw = right.number_input("Draw", 0, 10_000, key="df_draw", persist_state="session", help="Another number draws other images.")
    remember_view(VIEW)
    index = draw_test_images(data.test, int(count), int(draw), None if class_id == "any" else class_id)
    positions = " ".join(str(int(i)) for i in index)
    images, labels = model_inputs(data.test, index)
    for column, image, label, i in zip(st.columns(8), images, labels.tolist(), index.tolist()):
        column.image(enlarge(to_rgb(image), 3), caption=f"#{i} · {CLASS_NAMES[label][:18]}")
    return images, labels, f"test images {positions}", f"--test-index {positions}"


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) image in [0, 1] as 8-bit RGB (H, W, 3)."""
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def short_name(class_id: int, length: int = 24) -> str:
    """A class name short enough for one of four charts side by side (the long ones overlapped)."""
    name = CLASS_NAMES[class_id]
    return name if len(name) <= length else name[: length - 1].rstrip() + "…"


def side_by_side(result, i: int, known: bool) -> go.Figure:
    """Row 1: the four versions of image i; row 2: LRP heatmaps of each version's prediction."""
    titles = []
    for v, version in enumerate(VERSIONS):
        predicted = int(result.predicted[v, i])
        mark = "" if not known else (" ✓" if predicted == int(result.labels[i]) else " ✗")
        titles.append(f"{VERSION_TITLES[version]}<br><b>{short_name(predicted)}</b> {100 * float(result.confidence[v, i]):.1f} %{mark}")
    titles += [f"LRP: {short_name(int(result.predicted[v, i]))}" for v in range(len(VERSIONS))]
    fig = make_subplots(2, len(VERSIONS), subplot_titles=titles, vertical_spacing=0.14, horizontal_spacing=0.03)
    for v in range(len(VERSIONS)):
        rgb = (result.images[v, i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        fig.add_trace(go.Image(z=enlarge(rgb, 8), hovertemplate="RGB %{z}<extra>" + VERSION_TITLES[VERSIONS[v]] + "</extra>"), 1, v + 1)
        fig.add_trace(go.Image(z=enlarge(diverging_rgb(result.heatmaps[v, i].numpy()), 8), hoverinfo="skip"), 2, v + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_annotations(font_size=12)
    fig.update_layout(height=520, margin=dict(l=0, r=0, t=70, b=0))
    return fig


def robustness_chart(table: dict) -> go.Figure:
    rows = [("no attack", table["clean_accuracy"], table["clean_barycenter_accuracy"][table["defense"]["marginals"]])]
    rows += [(r["label"], r["aa"], r["ba"]) for r in table["attacks"]]
    names = [r[0] for r in rows]
    fig = go.Figure([
        go.Bar(name="without defense (AA)", x=names, y=[100 * r[1] for r in rows], marker_color="#d62728",
               hovertemplate="%{x}: %{y:.1f} %<extra>without defense</extra>"),
        go.Bar(name="with barycenter (BA)", x=names, y=[100 * r[2] for r in rows], marker_color="#2ca02c",
               hovertemplate="%{x}: %{y:.1f} %<extra>with barycenter</extra>"),
    ])
    fig.update_layout(barmode="group", height=380, margin=dict(l=0, r=0, t=40, b=0), yaxis=dict(title="accuracy (%)", range=[0, 100]),
                      xaxis=dict(title="attack"), legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"),
                      title=dict(text=f"Accuracy on {table['images']} test images without and with the defense", font=dict(size=14)))
    return fig


def spatial_chart(rows: list) -> go.Figure:
    """Clean accuracy and the sticker's success rate per transformation, side by side."""
    labels = [row["label"] for row in rows]
    fig = go.Figure([go.Bar(name="clean accuracy (higher is better)", x=labels, y=[100 * r["clean_accuracy"] for r in rows], marker_color="#2563eb",
                            hovertemplate="%{x}: %{y:.1f} %<extra>clean accuracy</extra>"),
                     go.Bar(name="attack success rate (lower is better)", x=labels, y=[100 * r["attack_success_rate"] for r in rows],
                            marker_color="#dc2626", hovertemplate="%{x}: %{y:.1f} %<extra>attack success rate</extra>")])
    fig.update_layout(barmode="group", height=380, margin=dict(l=0, r=0, t=50, b=0), yaxis_title="% of test images", yaxis_range=[0, 100],
                      title=dict(text="The sticker against test-time transformations: what each costs and what it buys", font=dict(size=14)),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def sensitivity_figure(grid, labels: int | None) -> go.Figure:
    columns = max(len(row) for row in grid)
    titles = []
    for row in grid:
        for cell in row:
            value = f"{cell.value:g}" if cell.parameter != "cost_unit" else ("1/32" if abs(cell.value - 1 / 32) < 1e-12 else f"{cell.value:g}")
            star = " ★" if cell.is_default else ""
            mark = "" if labels is None else (" ✓" if cell.predicted == labels else " ✗")
            titles.append(f"{PARAMETER_TITLES[cell.parameter]} = {value}{star}<br>{short_name(cell.predicted, 22)} {100 * cell.confidence:.0f} %{mark}")
        titles += [""] * (columns - len(row))
    fig = make_subplots(len(grid), columns, subplot_titles=titles, vertical_spacing=0.07, horizontal_spacing=0.02)
    for r, row in enumerate(grid, start=1):
        for c, cell in enumerate(row, start=1):
            rgb = (cell.barycenter.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            fig.add_trace(go.Image(z=enlarge(rgb, 4), hoverinfo="skip"), r, c)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_annotations(font_size=11)
    fig.update_layout(height=250 * len(grid), margin=dict(l=0, r=0, t=100, b=0),
                      title=dict(text="Barycenters with one parameter changed at a time (★: the defaults)", font=dict(size=14)))
    return fig


run_through_app()
st.title("Defense")
st.caption("Evasion attacks change a few pixel values so that the model misreads a sign. The barycentric defense (Subramanyam and Raj, "
           "ICIP 2022) replaces the input by the Wasserstein barycenter of its own slightly rotated and shifted copies, pulled towards "
           "the input, and classifies that instead. It needs no retraining.")
experiment = active_experiment()
VIEW = {"df_model": Choice(("poisoned", "clean"), "poisoned"), "df_attack": Choice(tuple(ATTACKS), next(iter(ATTACKS))),
        "df_eps_linf": Number(0.5, 64.0, 8.0), "df_eps_l2": Number(0.05, 8.0, 0.5), "df_seed": Number(0, 2**31 - 1, 0, integer=True),
        "df_marginals": Choice(("B6", "B4"), "B6"), "df_source": Choice(("test", "upload"), "test"),
        "df_class": Choice(("any", *range(NUM_CLASSES)), "any"), "df_count": Number(1, 8, 4, integer=True),
        "df_draw": Number(0, 10_000, 0, integer=True)}
restore_view(VIEW)
model_choice, attack_config, defense, (budget_linf, budget_l2) = controls()
remember_view(VIEW)
data = data_or_stop()
models = {"poisoned": experiment, "clean": clean_twin(experiment)}
chosen_experiment = models[model_choice]
trained = load_trained(data, chosen_experiment)
if trained is None:
    key = model_path(data, chosen_experiment).name
    settle_job(key, "Training", f"Training: {training_time(chosen_experiment, data)}.")
    st.write(f"The {model_choice} model of this experiment is not trained yet.")
    if st.button("Train it", type="primary"):
        RUNNER.submit(key, f"Training the {model_choice} model", on_session_device(lambda progress: train_or_load(chosen_experiment, data, progress=progress)))
        st.rerun()
    st.stop()

images, labels, caption, cli_source = image_source(data)
tab_images, tab_table, tab_sensitivity, tab_spatial = st.tabs(["Attack and purify", "AA / BA table", "Sensitivity", "Spatial transformations"])
with tab_images:
    settings = (trained.path.name, caption, attack_config, defense, None if labels is None else tuple(labels.tolist()),
                images.sum().item())
    key = f"inspect:{hash(settings)}"
    result = job_result(key, "Attack and barycenters",
                        lambda progress: inspect(trained.model, images, labels, attack_config, defense, progress=progress),
                        f"The attack on {images.shape[0]} image{'s' if images.shape[0] > 1 else ''}: "
                        f"{expected_time(estimate(attack_step(chosen_experiment.train.architecture, attack_config), images.shape[0]))}; "
                        "the bar follows its steps.", "Attack and purify")
    if result is not None:
        norm = "L∞" if attack_config.norm == "linf" else "L2"
        st.caption(f"{ATTACKS[attack_config.name]}, ε = {attack_config.budget:.4g} ({norm}), defense {defense.marginals}, "
                   f"{defense.iterations} iterations · {caption}. Heatmaps: composite LRP of each version's predicted class "
                   "(red: for it, blue: against it). ✓/✗: prediction right or wrong.")
        for i in range(images.shape[0]):
            known = labels is not None
            label = f"{int(result.labels[i])} · {CLASS_NAMES[int(result.labels[i])]}" if known else "unknown (the attack moves the image away from the clean prediction)"
            st.markdown(f"**Image {i + 1}** · true class: {label} · largest pixel change by the attack: "
                        f"{255 * float((result.images[1, i] - result.images[0, i]).abs().max()):.1f}/255")
            st.plotly_chart(side_by_side(result, i, known), width="stretch", key=f"side:{key}:{i}")
        st.code(inspect_command(experiment, model_choice, cli_source, attack_config, defense), language="bash")

with tab_table:
    left, right = st.columns([1, 2])
    count = left.select_slider("Test images", [20, 100, 200, 500, 1000, 2000], 1000, key="df_table_images", persist_state="session",
                               help="A seeded random sample of the test split; every attack runs on the same images.")
    chosen_attacks = right.multiselect("Attacks", list(ATTACKS), list(ATTACKS), format_func=ATTACKS.get, key="df_table_attacks", persist_state="session")
    robustness = None if not chosen_attacks else RobustnessConfig(images=int(count), attacks=tuple(a for a in ATTACKS if a in chosen_attacks),
                                  eps_linf=budget_linf, eps_l2=budget_l2, defense=defense)
    if robustness is None:
        st.error("No attack is chosen: choose at least one attack to measure.")
    else:
        st.caption(f"Budgets: ε = {255 * robustness.eps_linf:.3g}/255 for L∞ attacks, {robustness.eps_l2:g} for L2 attacks "
                   "(the sidebar's two budgets).")
    table = None if robustness is None else cached_table(trained.path.name, robustness)
    if table is None and robustness is not None:
        key = table_path(trained.path.name, robustness).name
        architecture = chosen_experiment.train.architecture
        per_attack = {a: estimate(attack_step(architecture, AttackConfig(name=a)), int(count)) for a in robustness.attacks}
        unmeasured = [ATTACKS[a] for a, seconds in per_attack.items() if seconds is None]
        measured_part = expected_time(sum(s for s in per_attack.values() if s is not None)) if len(unmeasured) < len(per_attack) else ""
        table = job_result(key, "Robustness table", lambda progress: robustness_table(chosen_experiment, robustness, data, progress=progress),
                           "Every attack runs once on every image and is cached. "
                           + (f"The attacks: {measured_part}" if measured_part else "")
                           + (f"{'; ' if measured_part else ''}not yet measured on this CPU: {', '.join(unmeasured)}" if unmeasured else "")
                           + ". The bar follows each attack.", f"Run the attacks on {count} images")
    if table is not None:
        st.plotly_chart(robustness_chart(table), width="stretch")
        rows = [{"attack": "no attack", "budget": "", "AA (%)": 100 * table["clean_accuracy"],
                 "BA (%)": 100 * table["clean_barycenter_accuracy"][defense.marginals]}]
        rows += [{"attack": r["label"], "budget": f"{r['eps']:.4g} ({'L∞' if r['norm'] == 'linf' else 'L2'})", "AA (%)": 100 * r["aa"],
                  "BA (%)": 100 * r["ba"]} for r in table["attacks"]]
        st.dataframe(rows, hide_index=True, column_config={"AA (%)": st.column_config.NumberColumn(format="%.1f"),
                                                           "BA (%)": st.column_config.NumberColumn(format="%.1f")})
        other = "B4" if defense.marginals == "B6" else "B6"
        st.caption(f"AA: accuracy on attacked images; BA: on their barycenters. Clean barycenter accuracy with {other}: "
                   f"{100 * table['clean_barycenter_accuracy'][other]:.1f} %.")
        trigger = table["trigger"]
        st.metric(f"Sticker trigger {CLASS_NAMES[trigger['source']]} → {CLASS_NAMES[trigger['target']]}: success rate with the barycenter "
                  f"({trigger['images']} stickered test images)", f"{100 * trigger['success_rate_barycenter']:.1f} %",
                  f"{100 * (trigger['success_rate_barycenter'] - trigger['success_rate']):+.1f} points against "
                  f"{100 * trigger['success_rate']:.1f} % without", delta_color="inverse",
                  help="Share of stickered source-class test images the model classifies as the target.")
        st.code(defend_command(experiment, model_choice, robustness), language="bash")

with tab_sensitivity:
    which = st.radio("Purify", ["clean", "attacked"], horizontal=True, key="df_sens_which", persist_state="session",
                     format_func={"clean": "the first clean image", "attacked": "its attacked version"}.get)
    inspected = RUNNER.get(f"inspect:{hash(settings)}")
    if which == "attacked" and (inspected is None or inspected.state != "done"):
        st.info("Run “Attack and purify” first to see the attacked image's barycenters.")
    else:
        first = images[0] if which == "clean" else inspected.result.images[1, 0]
        key = f"sensitivity:{trained.path.name}:{hash((caption, which, attack_config, defense, first.sum().item()))}"
        grid = job_result(key, "Sensitivity grid", lambda progress: sensitivity_grid(trained.model, first, defense, progress=progress),
                          "23 barycenters of one image, up to 2,000 iterations each; the bar counts them.", "Compute the grid")
        if grid is not None:
            st.caption("The paper's figure 1 (rows γ, θ, τ) and the two choices it leaves open: the iteration count and the cost's unit. "
                       "At a cost of 1 per pixel step the kernel's off-centre entries are e^−50: no transport, only a pixelwise mix.")
            st.plotly_chart(sensitivity_figure(grid, None if labels is None else int(labels[0])), width="stretch")
            st.code(inspect_command(experiment, model_choice, cli_source, attack_config, defense,
                                    sensitivity=which), language="bash")

with tab_spatial:
    st.caption("The sticker works where it was learnt (thesis 7.2), so moving, mirroring, zooming or turning every test image may disarm it. "
               "Each transformation is measured on the whole test split (clean accuracy: its cost) and on every stickered 50 km/h test image "
               "(attack success rate: what it buys). It cannot tell whether an attack is present.")
    text = st.text_input("Transformations (space-separated)", " ".join(DEFAULT_TRANSFORMS), key="df_spatial", persist_state="session",
                         help="; ".join(f"{kind}: {meaning}" for kind, meaning in KINDS.items())
                              + ". Examples: flip, scale=0.8, rotate=-15, shift=3,-2.")
    try:
        transforms = parse_transforms(text.split())
    except ConfigError as exc:
        st.error(f"These transformations cannot be measured: {exc}")
        transforms = None
    if transforms is not None:
        spatial = cached_spatial(trained.path.name, transforms)
        if spatial is None:
            spatial = job_result(spatial_path(trained.path.name, transforms).name, "Spatial transformations",
                                 lambda progress: spatial_defense(chosen_experiment, transforms, data, progress=progress),
                                 f"The {model_choice} model reads the {len(data.test):,} test images and the stickered ones once without and "
                                 f"once per transformation ({len(transforms)}); the bar counts them.", "Measure the transformations")
        if spatial is not None:
            rows = list(spatial["rows"])
            if table is not None:  # the barycentric defense, from the AA / BA tab's run, for comparison
                rows.append({"transform": "barycenter", "label": f"barycenter {defense.marginals} (sample)",
                             "clean_accuracy": table["clean_barycenter_accuracy"][defense.marginals],
                             "attack_success_rate": table["trigger"]["success_rate_barycenter"]})
            st.plotly_chart(spatial_chart(rows), width="stretch")
            st.dataframe([{"transformation": r["label"], "clean accuracy (%)": 100 * r["clean_accuracy"],
                           "attack success rate (%)": 100 * r["attack_success_rate"]} for r in rows], hide_index=True,
                         column_config={"clean accuracy (%)": st.column_config.NumberColumn(format="%.1f"),
                                        "attack success rate (%)": st.column_config.NumberColumn(format="%.1f")})
            st.caption(f"{spatial['test_images']:,} test images and {spatial['stickered_images']} stickered "
                       f"{CLASS_NAMES[spatial['source']]} images, {model_choice} model."
                       + (f" The barycenter row is the AA / BA tab's sample of {table['images']} test images and "
                          f"{table['trigger']['images']} stickered ones." if table is not None else
                          " Run the AA / BA table to see the barycentric defense beside them."))
            st.code(spatial_command(chosen_experiment, transforms), language="bash")
