"""The page: four tabs (Train, Runs, Chat, Export) wired to ``Ui``'s actions. Components carry ``elem_id``s
(train-<flag>, runs-..., chat-..., export-...) so the browser test can find them."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline machines: no calls home

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from ..config import GGUF_QUANTS, K_QUANTS, MERGE_BASES, ChatConfig  # noqa: E402
from ..errors import UserError  # noqa: E402
from . import form  # noqa: E402
from .actions import COLUMNS, EMBEDDED, Ui, problem  # noqa: E402
from .refresh import REFRESH_S, poll  # noqa: E402

OPEN_SECTIONS = ("what to train", "training")  # the other sections of the form start folded
EMPTY_REPLY = "*(an empty reply: only whitespace or special tokens)*"
INTRO = ("Runs live in `{root}`. Training, evaluation, Check data and Export run one job at a time in the background: "
         "closing the browser does not stop them, and every open tab sees the same runs.")


def field_input(field: form.FormField, method: str):
    common = {"label": field.name, "info": field.help, "elem_id": f"train-{field.name}",
              "visible": field.applies_to(method)}
    if field.kind == "bool":
        return gr.Checkbox(value=bool(field.default), **common)
    if field.kind == "choice":
        return gr.Dropdown(choices=list(field.choices), value=field.default, **common)
    if field.kind in ("int", "float") and field.default is not None:  # an empty gr.Number would read as 0
        return gr.Number(value=field.default, precision=0 if field.kind == "int" else None, **common)
    default = " ".join(map(str, field.default)) if isinstance(field.default, list) else field.default
    return gr.Textbox(value=default or "", placeholder="(default)" if field.default is None else None, **common)


def train_tab(ui: Ui):
    fields = form.form_fields()
    inputs: dict[str, gr.components.Component] = {}
    sections: dict[str, list[form.FormField]] = {}
    for field in fields:
        sections.setdefault(field.section, []).append(field)
    folds = {}
    for number, (section, members) in enumerate(sections.items()):
        shown = any(f.applies_to(form.DEFAULT_METHOD) for f in members)
        with gr.Accordion(section, open=section in OPEN_SECTIONS, visible=shown,
                          elem_id=f"train-section-{number}") as folds[section]:
            for start in range(0, len(members), 3):
                with gr.Row():
                    for field in members[start:start + 3]:
                        inputs[field.name] = field_input(field, form.DEFAULT_METHOD)
            if section == "what to train":
                upload = gr.UploadButton("Upload a data file for dataset (.json, .jsonl, .csv, .parquet)",
                                         file_types=[".json", ".jsonl", ".csv", ".parquet"], size="sm",
                                         elem_id="train-upload")
    names = list(inputs)
    components = [inputs[n] for n in names]
    with gr.Row():
        check_button = gr.Button("Check data", elem_id="train-check")
        start_button = gr.Button("Start training", variant="primary", elem_id="train-start")
        download = gr.DownloadButton("Download YAML", elem_id="train-yaml-download")
    status = gr.Markdown(elem_id="train-status")
    command = gr.Code(label="command line", language="shell", elem_id="train-command", interactive=False)
    yaml_box = gr.Code(label="YAML (unitune train --config FILE)", language="yaml", elem_id="train-yaml",
                       interactive=False)
    check_output = gr.Textbox(label="unitune check", lines=12, max_lines=40, elem_id="train-check-output",
                              visible=False)

    def values(*args) -> dict:
        return dict(zip(names, args))

    def preview(*args):
        line, text, path = ui.preview(values(*args))
        return line, text, gr.DownloadButton(value=path, interactive=path is not None)

    def show_method_fields(method: str):  # a section none of whose fields apply to the method is hidden too
        return [gr.update(visible=f.applies_to(method)) for f in fields] + [
            gr.update(visible=any(f.applies_to(method) for f in members)) for members in sections.values()]

    def check(*args):  # a job: the page follows it until its report is in
        for line, text in ui.check_data(values(*args)):
            yield line, gr.Textbox(value=text, visible=bool(text))

    inputs["method"].change(show_method_fields, inputs["method"], [inputs[f.name] for f in fields] +
                            list(folds.values()))
    gr.on([c.change for c in components], preview, components, [command, yaml_box, download])
    upload.upload(ui.upload, upload, inputs["dataset"])
    start_button.click(lambda *a: ui.start(values(*a)), components, status)
    # no concurrency limit: a click only waits on its job, and the queue runs one job at a time
    check_button.click(check, components, [status, check_output], concurrency_limit=None, show_progress="minimal")
    return preview, components, [command, yaml_box, download]


def runs_tab(ui: Ui):
    gr.Markdown(INTRO.format(root=ui.root))
    table = gr.Dataframe(headers=COLUMNS, value=pd.DataFrame(ui.table(), columns=COLUMNS), interactive=False,
                         elem_id="runs-table", wrap=True)
    choices = [p.name for p in ui.runs()]
    select = gr.CheckboxGroup(choices=choices, label="selected runs (curves, evaluate, resume)",
                              elem_id="runs-select")
    with gr.Row():
        evaluate = gr.Button("Evaluate selected", variant="primary", elem_id="runs-evaluate")
        resume = gr.Button("Resume selected", elem_id="runs-resume")
        stop = gr.Button("Stop the running job", variant="stop", elem_id="runs-stop")
        max_samples = gr.Number(value=100, precision=0, label="evaluate: rows per test split",
                                elem_id="runs-max-samples")
        skip_base = gr.Checkbox(value=False, label="evaluate: skip the base model", elem_id="runs-skip-base")
    status = gr.Markdown(elem_id="runs-status")
    # The report's charts (matplotlib): Gradio 6.31's LinePlot kept drawing only the series of its first value.
    live_title = gr.Markdown(elem_id="runs-live-title", visible=False)
    live = gr.HTML(elem_id="runs-live", visible=False)
    gr.Markdown("#### Selected runs", elem_id="runs-overlay-title")
    overlay = gr.HTML(elem_id="runs-overlay")
    log = gr.Textbox(label="job output", lines=8, max_lines=8, autoscroll=True, elem_id="runs-log", visible=False)
    gr.Markdown("### Evaluation")
    rows, headers, charts, files = ui.results()
    metrics = gr.Dataframe(value=pd.DataFrame(rows, columns=headers), interactive=False, elem_id="eval-table",
                           wrap=True)
    chart_view = gr.HTML(charts, elem_id="eval-charts")
    report_files = gr.File(value=files or None, file_count="multiple", label="report files", elem_id="eval-files")
    seen = gr.State({"choices": choices, "results": ui.results_version()})

    def refresh(selected, state):
        now = poll(ui, selected, state)
        new_choices = gr.CheckboxGroup(choices=now.names) if now.names != state["choices"] else gr.skip()
        if now.results is not None:
            rows, headers, charts, files = now.results
            results = (pd.DataFrame(rows, columns=headers), charts, files or None)
        else:
            results = (gr.skip(), gr.skip(), gr.skip())
        running = now.running
        return (pd.DataFrame(now.table, columns=COLUMNS), new_choices,
                gr.Markdown(f"#### Training now: {running.name}" if running else "", visible=bool(running)),
                gr.HTML(now.live_chart, visible=bool(running)) if now.live_chart is not None else gr.skip(),
                gr.skip() if now.selected_chart is None else now.selected_chart,
                gr.Textbox(value=now.log_tail, label=now.log_title, visible=bool(now.log_tail)), *results, now.seen)

    def selected_chart(selected):
        return ui.chart([ui.root / name for name in selected or []])

    timer = gr.Timer(REFRESH_S)
    timer.tick(refresh, [select, seen], [table, select, live_title, live, overlay, log, metrics, chart_view,
                                         report_files, seen], show_progress="hidden")
    select.change(selected_chart, select, overlay, show_progress="hidden")
    evaluate.click(ui.evaluate, [select, max_samples, skip_base], status)
    resume.click(ui.resume, select, status)
    stop.click(ui.stop, None, status)


def chat_tab(ui: Ui):
    choices = ui.chat_choices()
    with gr.Row():
        model_a = gr.Dropdown(choices=choices, value=EMBEDDED, label="model A", elem_id="chat-a")
        model_b = gr.Dropdown(choices=[("(none)", "")] + choices, value="", label="model B (side by side)",
                              elem_id="chat-b")
        refresh = gr.Button("Refresh the list", elem_id="chat-refresh", scale=0, size="sm")
    with gr.Row():
        system = gr.Textbox(label="system prompt", placeholder="(the template's default)", elem_id="chat-system")
        temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0 = greedy)",
                                elem_id="chat-temperature")
        max_new = gr.Number(value=ChatConfig.max_new_tokens, precision=0, label="max new tokens",
                            elem_id="chat-max-new-tokens")
    with gr.Row():
        box_a = gr.Chatbot(label="A", elem_id="chat-box-a", height=340)
        box_b = gr.Chatbot(label="B", elem_id="chat-box-b", height=340, visible=False)
    with gr.Row():
        message = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, elem_id="chat-input",
                             scale=5)
        send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1)
        reset = gr.Button("Reset", elem_id="chat-reset", scale=1)
    status = gr.Markdown(elem_id="chat-status")

    def respond(text, hist_a, hist_b, a, b, system_prompt, temp, max_tokens):
        hist_a, hist_b = list(hist_a or []), list(hist_b or [])
        if not text or not text.strip():
            yield hist_a, hist_b, "", ""
            return
        try:
            cfg = ChatConfig(max_new_tokens=int(max_tokens or 256), temperature=float(temp or 0),
                             system=system_prompt or None)
        except UserError as err:
            yield hist_a, hist_b, text, problem(err)
            return
        for source, hist in ((a, hist_a), (b, hist_b)):
            if not source:
                continue
            before = [plain(m) for m in hist]
            hist += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
            yield hist_a, hist_b, "", f"{label_of(source)} is answering..."
            try:
                for reply in ui.stream_reply(source, before, text, cfg):
                    hist[-1] = {"role": "assistant", "content": reply}
                    yield hist_a, hist_b, "", ""
            except Exception as err:  # a model that cannot load or chat: one line, the UI goes on
                yield hist_a, hist_b, "", problem(err)
                return
            if not hist[-1]["content"].strip():
                hist[-1] = {"role": "assistant", "content": EMPTY_REPLY}
        yield hist_a, hist_b, "", ""

    def label_of(source: str) -> str:
        return next((label for label, value in ui.chat_choices() if value == source), source)

    def fresh_choices():
        found = ui.chat_choices()
        return gr.Dropdown(choices=found), gr.Dropdown(choices=[("(none)", "")] + found)

    chat_inputs = [message, box_a, box_b, model_a, model_b, system, temperature, max_new]
    send.click(respond, chat_inputs, [box_a, box_b, message, status])
    message.submit(respond, chat_inputs, [box_a, box_b, message, status])
    reset.click(lambda: ([], []), None, [box_a, box_b])
    model_b.change(lambda b: gr.Chatbot(visible=bool(b)), model_b, box_b)
    # the models another choice replaced are freed (the chat holds at most the two it shows)
    gr.on([model_a.change, model_b.change], ui.chat_shown, [model_a, model_b], None)
    refresh.click(fresh_choices, None, [model_a, model_b])
    return fresh_choices, [model_a, model_b]


def plain(message: dict) -> dict:
    """A Chatbot message as a chat template takes it: role and text (Gradio may hand back content as parts)."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return {"role": message["role"], "content": str(content or "")}


def export_tab(ui: Ui):
    runs = ui.finished_runs()
    with gr.Row():
        run = gr.Dropdown(choices=runs, value=runs[0] if runs else None, label="run", elem_id="export-run")
        refresh = gr.Button("Refresh the list", elem_id="export-refresh", scale=0, size="sm")
    with gr.Row():
        fmt = gr.Radio(["gguf", "safetensors"], value="gguf", label="format (safetensors: the merged model folder)",
                       elem_id="export-format")
        quant = gr.Dropdown(list(GGUF_QUANTS + K_QUANTS), value="f16", label="GGUF weights", elem_id="export-quant")
        merge_base = gr.Radio(list(MERGE_BASES), value="quantized", label="QLoRA runs: merge into",
                              elem_id="export-merge-base")
    output = gr.Textbox(label="output folder: a new one under the runs folder (the UI never replaces files)",
                        placeholder="(default: <runs folder>/exported/<run>-<weights>)", elem_id="export-output")
    go = gr.Button("Merge and export", variant="primary", elem_id="export-go")
    status = gr.Markdown(elem_id="export-status")
    files = gr.File(file_count="multiple", label="download", elem_id="export-files")

    def export(run_name, format_, quant_, base, out):  # a job: the page follows it until its files are there
        for line, found in ui.export(run_name, format_, quant_, base, out):
            yield line, found or None

    go.click(export, [run, fmt, quant, merge_base, output], [status, files], concurrency_limit=None,
             show_progress="minimal")
    fmt.change(lambda f: gr.Dropdown(visible=f == "gguf"), fmt, quant)
    def fresh_runs(current):
        found = ui.finished_runs()
        return gr.Dropdown(choices=found, value=current if current in found else (found[0] if found else None))

    refresh.click(fresh_runs, run, run)
    return fresh_runs, run


def build(ui: Ui) -> gr.Blocks:
    with gr.Blocks(title="unitune") as page:
        gr.Markdown("## unitune: fine-tune, compare, chat, export")
        with gr.Tabs():
            with gr.Tab("Train", id="train"):
                preview, form_inputs, preview_outputs = train_tab(ui)
            with gr.Tab("Runs", id="runs"):
                runs_tab(ui)
            with gr.Tab("Chat", id="chat") as chat:
                fresh_choices, chat_models = chat_tab(ui)
            with gr.Tab("Export", id="export") as export:
                fresh_runs, export_run = export_tab(ui)
        chat.select(fresh_choices, None, chat_models)
        export.select(fresh_runs, export_run, export_run)
        page.load(preview, form_inputs, preview_outputs)
    return page
