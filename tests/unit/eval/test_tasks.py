"""Zero-shot tasks: the harness' own prompts on local JSONL files, per-example results, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.task_items import ITEMS

from ngc.cli import main as cli
from ngc.errors import DataNotFoundError, EvaluationError, UsageError
from ngc.eval.tasks import TASKS, evaluate_tasks, parse_tasks, task_config, task_result
from ngc.models.tiny import build_tiny_model, build_tiny_tokenizer

pytest.importorskip("lm_eval")


def test_tasks_use_the_harness_prompts_and_keep_every_example(task_data_dir):
    model, tokenizer = build_tiny_model("llama"), build_tiny_tokenizer()
    results = evaluate_tasks(model, tokenizer, ["arc_easy", "piqa", "winogrande", "boolq"], task_data_dir, batch_size=4)
    by_task = {result.task: result for result in results}
    for task, (_, rows) in ITEMS.items():
        result = by_task[task]
        assert result.n == len(rows) == len(result.examples)
        assert [example.doc_id for example in result.examples] == list(range(len(rows)))
        # the aggregate is the mean of the per-example scores
        assert result.acc == pytest.approx(sum(e.correct for e in result.examples) / len(rows))
    arc = by_task["arc_easy"]
    assert arc.examples[1].context == "Question: Which one is number 1?\nAnswer:"  # the harness' arc_easy prompt
    assert arc.examples[1].gold == " two"  # answerKey B
    assert arc.acc_norm is not None and by_task["boolq"].acc_norm is None  # boolq reports acc only
    assert by_task["piqa"].examples[0].context == "Question: Open jar 0\nAnswer:"


def test_limit_scores_the_first_items(task_data_dir):
    (result,) = evaluate_tasks(build_tiny_model("llama"), build_tiny_tokenizer(), ["arc_easy"], task_data_dir, limit=2)
    assert result.n == 2 and [e.doc_id for e in result.examples] == [0, 1]


def test_task_config_swaps_only_the_dataset(task_data_dir):
    config = task_config(TASKS["arc_easy"], task_data_dir)
    assert config["include"].endswith("arc/arc_easy.yaml") and Path(config["include"]).is_file()
    assert config["dataset_path"] == "json"
    assert config["dataset_kwargs"]["data_files"] == {"test": str(task_data_dir / "arc_easy" / "test.jsonl")}
    assert config["test_split"] == "test" and config["training_split"] is None


def test_task_names_and_missing_data_are_clear_errors(task_data_dir):
    assert parse_tasks("piqa, arc_easy,piqa") == ["piqa", "arc_easy"]
    assert "gsm8k" not in parse_tasks("zero-shot") and "gsm8k" in parse_tasks("all")
    with pytest.raises(UsageError, match="unknown task 'arc'") as info:
        parse_tasks("arc")
    assert "arc_easy" in info.value.hint
    with pytest.raises(DataNotFoundError, match="hellaswag/validation.jsonl does not exist"):
        task_config(TASKS["hellaswag"], task_data_dir)
    with pytest.raises(DataNotFoundError, match="needs a data directory"):
        task_config(TASKS["piqa"], None)


def _arc_easy_correct(folder: Path, n: int) -> list[bool]:
    """Independent of lm-eval: score each choice of the first ``n`` items with transformers, as the harness'
    arc_easy prompt reads (``Question: ...\nAnswer:`` + `` choice``), and compare the best with the key."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)

    def loglikelihood(context: str, continuation: str) -> float:
        start = len(tokenizer(context, add_special_tokens=False).input_ids)
        whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0], -1)
        return sum(logprobs[i - 1, whole[i]].item() for i in range(start, len(whole)))

    correct = []
    for row in ITEMS["arc_easy"][1][:n]:
        context = f"Question: {row['question']}\nAnswer:"
        scores = [loglikelihood(context, " " + text) for text in row["choices"]["text"]]
        correct.append(scores.index(max(scores)) == row["choices"]["label"].index(row["answerKey"]))
    return correct


def test_eval_command_writes_tasks_json_and_samples(capsys, tmp_path, tiny_folders, task_data_dir):
    out, samples = tmp_path / "eval.json", tmp_path / "samples.jsonl"
    args = ["eval", str(tiny_folders["llama"]), "--tasks", "arc_easy,piqa", "--limit", "3"]
    args += ["--data-dir", str(task_data_dir), "--json", str(out), "--samples", str(samples)]
    assert cli.run(args) == 0
    shown = capsys.readouterr().out
    assert "arc_easy" in shown and "mean" in shown
    payload = json.loads(out.read_text())
    assert payload["ppl"] == {}  # --tasks without --ppl skips perplexity
    assert set(payload["tasks"]) == {"arc_easy", "piqa"}
    expected = _arc_easy_correct(tiny_folders["llama"], 3)
    assert payload["tasks"]["arc_easy"]["n"] == 3
    assert payload["tasks"]["arc_easy"]["acc"] == pytest.approx(sum(expected) / 3, abs=1e-12)
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [line["correct"] for line in lines if line["task"] == "arc_easy"] == expected
    assert len(lines) == 6 and {line["task"] for line in lines} == {"arc_easy", "piqa"}
    assert cli.run(["eval", str(tiny_folders["llama"]), "--tasks", "gsm8k", "--data-dir", str(task_data_dir)]) == 1
    err = capsys.readouterr().err
    assert "gsm8k/test.jsonl does not exist" in err and "Traceback" not in err


def _harness_output(task: str, row: dict) -> dict:
    sample = {"doc_id": 0, "arguments": [["Q:", " a"], ["Q:", " b"]], "target": 1, "acc": 0.0, "filter": "none"}
    return {"results": {task: row}, "n-samples": {task: {"effective": 1}}, "samples": {task: [sample]}}


@pytest.mark.parametrize("row", [{"alias": "piqa"}, {"acc,none": "N/A"}, {"acc_norm,none": 0.5}])
def test_a_missing_metric_is_an_error_not_accuracy_zero(row):
    with pytest.raises(EvaluationError, match="no 'acc,none' for task piqa"):
        task_result(TASKS["piqa"], _harness_output("piqa", row))


def test_a_reported_zero_stays_zero_and_absent_task_is_an_error():
    result = task_result(TASKS["piqa"], _harness_output("piqa", {"acc,none": 0.0, "acc_stderr,none": 0.0}))
    assert result.acc == 0.0 and result.n == 1 and result.examples[0].gold == " b"
    with pytest.raises(EvaluationError, match="no results for task piqa"):
        task_result(TASKS["piqa"], {"results": {}})
