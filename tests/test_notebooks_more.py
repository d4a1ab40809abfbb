"""Notebooks 00, 06, 07 and 09 run headless with nbclient (a real kernel, no browser), with small parameters.

Each test replaces the cell tagged `parameters`, executes every cell, and checks that no cell raised or wrote to
stderr (a warning a notebook means to keep is filtered there and explained in its markdown), then asserts the
numbers and text the notebook's outputs show. THREADS = 1: on a busy shared 2-core machine two spinning torch
threads per process made the kernel several times slower.
"""
import ast
import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _execute(name: str, parameters: str, tmp_path: Path):
    """Run notebook `name` in `tmp_path` with the `parameters` cell replaced; fail on any error or stderr."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    cell.source = parameters
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    stderr = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, stderr
    return nb


def _text(nb, starts_with: str) -> str:
    """Everything the (first) code cell whose source starts with `starts_with` printed or returned, as text."""
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(starts_with))
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.outputs)


def _html(nb, starts_with: str) -> str:
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(starts_with))
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)


def _steps(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "step"]


@pytest.mark.integration
def test_tour_notebook_executes(tmp_path):
    nb = _execute("00_tour.ipynb", 'MODEL = "minilm"\nDATASET = "intents-en"\nTRAIN_SAMPLES = 256\n'
                  'EVAL_SAMPLES = 64\nSTEPS = 16\nBATCH_SIZE = 16\nMAX_LENGTH = 32\nIG_STEPS = 8\n'
                  'FULL_SIZE = False\nTHREADS = 1', tmp_path)
    assert _text(nb, "import datasets") == "{'train': 256, 'validation': 64, 'test': 64}"
    assert re.match(r"\d+ labels, imbalance [\d.]+x .*median length \d+ tokens", _text(nb, "report = "))
    assert "nbtune Dashboard" in _text(nb, "size = ")
    # the LR edit scheduled half-way was applied at step 8, from the scheduled value to 1e-4
    (edit,) = ast.literal_eval(_text(nb, "run.start("))
    assert edit[:2] == (8, "lr") and edit[3] == 1e-4 and edit[2] != edit[3]
    results = ast.literal_eval(_text(nb, "{split: {k: round"))
    assert set(results) == {"validation", "test"} and 0.0 <= results["test"]["accuracy"] <= 1.0
    assert len(_steps(tmp_path / "runs" / "00-tour")) == 16
    top = ast.literal_eval(_text(nb, 'dash.select("Explain")'))
    assert set(top) == {"ig", "attention"} and all(len(words) == 3 for words in top.values())
    # every tab was opened, built, and kept; none failed
    assert _text(nb, "import optuna").strip() == ("nbtune Dashboard · run 00-tour · Data (built) | Train (built) | "
                                               "Tune (built) | Explain (built) | Export (built) · showing Train")


@pytest.mark.integration
def test_lora_causal_lm_notebook_executes(tmp_path):
    prompts = ["Where do you live?", "Do you feel emotions?"]
    nb = _execute("06_lora_causal_lm.ipynb", 'MODEL = "smollm2"\nDATASET = "chatterbot-sft"\nSTEPS = 6\n'
                  'BATCH_SIZE = 2\nMAX_LENGTH = 48\nEVAL_SAMPLES = 8\nRANK = 8\nLEARNING_RATE = 2e-3\n'
                  f'DOMAIN_RATIO = 0.5\nMAX_NEW_TOKENS = 8\nPROMPTS = {prompts!r}\nFULL_SIZE = False\nTHREADS = 1',
                  tmp_path)
    share = re.search(r"trainable: [\d,]+ of [\d,]+ parameters \(([\d.]+)%\)", _text(nb, "import json"))
    assert share and 0 < float(share.group(1)) < 2.0          # adapters only: under 2% of SmolLM2
    assert "855 train chats" in _text(nb, "import json")
    assert _text(nb, "adapted = ").startswith("adapted projections: ['k_proj', 'o_proj', 'q_proj', 'v_proj']")
    summary = ast.literal_eval(_text(nb, "run.wait()"))
    assert summary["steps"] == 6 and summary["status"] == "finished"
    assert summary["validation loss after"] < summary["validation loss before"]       # the fine-tune learned
    assert summary["perplexity after"] < summary["perplexity before"]
    run_dir = tmp_path / "runs" / "06-lora-sft"
    assert [s["step"] for s in _steps(run_dir)] == [1, 2, 3, 4, 5, 6]
    table = _html(nb, "replies_after = ")                      # the HTML table: no wrapping of long replies
    assert re.findall(r"<th>(.*?)</th>", table) == ["", "before", "after", "prompt", "", "", *prompts]
    replies = re.findall(r"<td>(.*?)</td>", table, flags=re.S)
    assert len(replies) == 2 * len(prompts) and all(r.strip() for r in replies)   # a reply in both columns
    assert (run_dir / "adapters" / "adapter_model.safetensors").stat().st_size > 100_000


@pytest.mark.integration
def test_distillation_notebook_executes(tmp_path):
    nb = _execute("07_distillation.ipynb", 'TEACHER = "minilm"\nDATASET = "intents-en"\nSTUDENT_LAYERS = 2\n'
                  'TRAIN_SAMPLES = 480\nEVAL_SAMPLES = 96\nTEACHER_STEPS = 30\nSTUDENT_STEPS = 30\nBATCH_SIZE = 16\n'
                  'MAX_LENGTH = 32\nLEARNING_RATE = 2e-4\nTEMPERATURE = 2.0\nALPHA = 0.7\nSPEED_REPEATS = 1\n'
                  'FULL_SIZE = False\nTHREADS = 1', tmp_path)
    accuracy = float(re.search(r"teacher: 30 steps, test accuracy ([\d.]+)", _text(nb, "teacher = ")).group(1))
    assert accuracy > 0.2                                    # 35 classes: chance is about 0.03
    assert _text(nb, "shrink = ").strip() == "students: 30 steps alone, 30 steps distilled"
    last = ast.literal_eval(_text(nb, "last = "))
    assert last["loss"] == pytest.approx(0.3 * last["loss/task"] + last["loss/distill"], abs=1e-3)   # 1 - alpha
    assert 0.0 <= last["distill/agreement"] <= 1.0 and last["loss/distill"] >= 0.0
    table = _text(nb, "rows = ")
    for row in ("teacher", "student alone", "student distilled", "fidelity to teacher", "speed-up"):
        assert row in table
    # the 2-layer student keeps MiniLM's embedding table: 15.63M of 22.73M parameters
    assert re.match(r"the student has 69% of the teacher's parameters; accuracy retained: distilled \d+%, alone "
                    r"\d+%; fidelity to the teacher: distilled \d+%, alone \d+%", _text(nb, "t, kd, plain"))
    teacher_config = json.loads((tmp_path / "runs" / "07-teacher" / "model" / "config.json").read_text())
    assert len(teacher_config["id2label"]) == 35 and teacher_config["num_hidden_layers"] == 6
    for name in ("07-student-alone", "07-student-distilled"):
        assert len(_steps(tmp_path / "runs" / name)) == 30
    assert "loss/distill" in _steps(tmp_path / "runs" / "07-student-distilled")[-1]["methods"]
    assert "methods" not in _steps(tmp_path / "runs" / "07-student-alone")[-1] or \
        "loss/distill" not in _steps(tmp_path / "runs" / "07-student-alone")[-1]["methods"]


@pytest.mark.integration
def test_deepseek_recipe_notebook_executes(tmp_path):
    nb = _execute("09_deepseek_recipe.ipynb", 'MODEL = "tiny-deepseek-v3"\nPRETRAIN_STEPS = 16\nSTEPS = 8\n'
                  'BATCH_SIZE = 8\nMAX_LENGTH = 32\nLEARNING_RATE = 3e-3\nEVAL_SAMPLES = 16\nLORA_RANK = 4\n'
                  'FULL_SIZE = False\nTHREADS = 1', tmp_path)
    arch = _text(nb, "tiny = ")
    assert re.search(r"n_routed_experts\s+4\s+256", arch) and re.search(r"kv_lora_rank\s+16\s+512", arch)
    pretrained = re.search(r"pretrained 16 steps on general text: validation perplexity (\d+)", _text(nb, "def config"))
    assert pretrained and int(pretrained.group(1)) < 30522               # below a uniform guess over the vocabulary
    assert re.match(r"train.precision=auto on cpu -> (fp32|bf16) \(a CPU (with|without) native bf16\)",
                    _text(nb, "probe = "))
    table = _text(nb, "rows, runs = ")
    before = re.search(r"base model before fine-tuning: domain perplexity (\d+)", table)
    for recipe in ("base", "+ domain (layer LR, unfreezing, mixing)", "+ task (NEFTune)", "LoRA on MLA"):
        assert recipe in table
    base_after = float(re.search(r"\nbase\s+([\d.]+)", table).group(1))
    assert base_after < int(before.group(1))                              # fine-tuning lowered the domain perplexity
    inside = _text(nb, "if not FULL_SIZE:")
    for group in ("embeddings", "attention", "ffn", "head"):
        assert group in inside
    assert "(0, '1/5 blocks: down to head')" in inside and "'5/5 blocks: down to embeddings')" in inside
    assert _text(nb, "lora_run = ").startswith(
        "adapted: ['kv_a_proj_with_mqa', 'kv_b_proj', 'o_proj', 'q_a_proj', 'q_b_proj']")
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir() if (p / "metrics.jsonl").is_file())
    assert runs == ["09-base", "09-domain-layer-lr-unfreezing-mixing", "09-lora-on-mla-mixing-neftune", "09-pretrain",
                    "09-task-neftune"]
    assert all(len(_steps(tmp_path / "runs" / r)) == (16 if r == "09-pretrain" else 8) for r in runs)
