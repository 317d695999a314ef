import math
import warnings

import numpy as np
import pytest
import torch

from maple_peft.training.metrics import (
    RunMetrics,
    base_novel_harmonic_mean,
    build_run_metrics,
    classification_metrics,
    harmonic_mean,
    run_split_source,
)
from maple_peft.training.tables import method_key, method_title, summarize_runs


def _reference_metrics(predictions, labels, num_classes):
    """Accuracy, macro-F1 over classes with images, and per-class recall, all by plain counting."""
    correct = sum(p == t for p, t in zip(predictions, labels, strict=True))
    f1s, recalls = [], {}
    for c in range(num_classes):
        support = sum(t == c for t in labels)
        if support == 0:
            continue
        tp = sum(p == c and t == c for p, t in zip(predictions, labels, strict=True))
        predicted = sum(p == c for p in predictions)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        recalls[c] = 100 * recall
    return 100 * correct / len(labels), 100 * sum(f1s) / len(f1s), recalls


def test_classification_metrics_on_a_hand_computed_example():
    metrics = classification_metrics([0, 1, 1, 2, 2, 0], [0, 1, 0, 2, 2, 1], ["cat", "dog", "bird"])

    assert metrics["accuracy"] == pytest.approx(400 / 6)
    assert metrics["macro_f1"] == pytest.approx(100 * (0.5 + 0.5 + 1.0) / 3)
    assert metrics["per_class_accuracy"] == pytest.approx({"cat": 50.0, "dog": 50.0, "bird": 100.0})
    assert list(metrics["per_class_accuracy"]) == ["cat", "dog", "bird"]
    assert metrics["num_images"] == 6
    assert metrics["num_classes"] == 3


def test_classification_metrics_match_counting_on_random_predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=300).tolist()
    predictions = [t if rng.random() < 0.6 else int(rng.integers(0, 7)) for t in labels]
    names = [f"class {i}" for i in range(7)]

    metrics = classification_metrics(predictions, labels, names)
    accuracy, macro_f1, recalls = _reference_metrics(predictions, labels, 7)

    assert metrics["accuracy"] == pytest.approx(accuracy)
    assert metrics["macro_f1"] == pytest.approx(macro_f1)
    assert metrics["per_class_accuracy"] == pytest.approx({names[c]: r for c, r in recalls.items()})


def test_classes_without_test_images_are_left_out_without_division_by_zero():
    names = ["a", "b", "c", "d"]
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        # "c" and "d" have no test image; "d" is predicted once (a false positive of d, an error of a).
        metrics = classification_metrics([0, 1, 1, 3], [0, 1, 1, 0], names)

    assert set(metrics["per_class_accuracy"]) == {"a", "b"}
    assert metrics["num_classes"] == 4
    assert metrics["accuracy"] == pytest.approx(75.0)
    # a: P=1, R=0.5 -> F1=2/3; b: P=1, R=1 -> F1=1; the mean is over a and b only.
    assert metrics["macro_f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_classification_metrics_accept_tensors_and_logits():
    labels = torch.tensor([0, 1, 2, 2])
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 5.0, 1.0], [0.0, 0.0, 9.0]])

    from_logits = classification_metrics(logits, labels, ["x", "y", "z"])
    from_indices = classification_metrics(logits.argmax(-1).numpy(), labels.tolist(), ("x", "y", "z"))

    assert from_logits == from_indices
    assert classification_metrics(logits.to(torch.bfloat16), labels, ["x", "y", "z"]) == from_logits
    assert from_logits["accuracy"] == pytest.approx(75.0)


@pytest.mark.parametrize(
    ("predictions", "labels", "names", "message"),
    [
        ([0, 1], [0], ["a", "b"], "2 predictions but 1 labels"),
        ([0, 1], [0, 5], ["a", "b"], "class index 5"),
        ([0, -1], [0, 1], ["a", "b"], "class index -1"),
        ([0, 1], [0, 1], ["a", "a"], "unique"),
        ([], [], ["a"], "empty"),
        ([0, 1], [0, 1], [], "class_names is empty"),
        ([0.5, 1], [0, 1], ["a", "b"], "integer class indices"),
        (np.zeros((2, 3)), [0, 1], ["a", "b"], "logits of shape"),
    ],
)
def test_classification_metrics_reject_bad_inputs_naming_the_problem(predictions, labels, names, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(predictions, labels, names)


def test_harmonic_mean():
    assert harmonic_mean(80.0, 70.0) == pytest.approx(2 * 80 * 70 / 150)
    assert harmonic_mean(0, 0) == 0.0
    assert harmonic_mean(0.0, 50.0) == 0.0
    assert harmonic_mean(np.float32(60.0), 60) == pytest.approx(60.0)
    with pytest.raises(ValueError, match="novel=-1"):
        harmonic_mean(50.0, -1)
    with pytest.raises(ValueError, match="base=nan"):
        harmonic_mean(float("nan"), 1.0)


def _run(seed, base, novel, dataset="eurosat", setting="base2novel", zero_shot=None):
    results = {"base": {"accuracy": base, "macro_f1": base - 1}, "novel": {"accuracy": novel, "macro_f1": novel - 1}}
    run = {"dataset": dataset, "setting": setting, "seed": seed, "base_model": "clip", "results": results}
    if zero_shot is not None:
        run["zero_shot"] = {"results": {"base": {"accuracy": zero_shot[0]}, "novel": {"accuracy": zero_shot[1]}}}
    return run


def test_summarize_runs_takes_the_harmonic_mean_of_the_seed_averages():
    runs = [_run(1, 90.0, 60.0), _run(2, 94.0, 80.0)]

    summary = summarize_runs(runs)

    base, novel = summary["results"]["base"], summary["results"]["novel"]
    assert (base["accuracy_mean"], novel["accuracy_mean"]) == (pytest.approx(92.0), pytest.approx(70.0))
    # the sample standard deviation (n - 1): 90 and 94 give 2.83, not the population's 2.0
    assert (base["accuracy_std"], novel["accuracy_std"]) == (
        pytest.approx(2 * math.sqrt(2)),
        pytest.approx(10 * math.sqrt(2)),
    )
    assert summary["std"] == "sample"
    assert base["macro_f1_mean"] == pytest.approx(91.0)
    assert summary["harmonic_mean"] == pytest.approx(2 * 92 * 70 / 162)
    mean_of_hms = (harmonic_mean(90, 60) + harmonic_mean(94, 80)) / 2
    assert not math.isclose(summary["harmonic_mean"], mean_of_hms, abs_tol=0.1)
    assert summary["seeds"] == [1, 2]
    assert summary["num_runs"] == 2
    assert (summary["dataset"], summary["setting"]) == ("eurosat", "base2novel")


def test_summarize_runs_gives_mean_and_std_per_target_for_cross_dataset():
    def run(seed, accuracies):
        results = {name: {"accuracy": acc, "macro_f1": acc} for name, acc in accuracies.items()}
        return {"dataset": "imagenet", "setting": "cross_dataset", "seed": seed, "base_model": "m", "results": results}

    runs = [run(1, {"imagenet": 70.0, "dtd": 40.0}), run(2, {"imagenet": 72.0, "dtd": 44.0}), run(3, {"dtd": 48.0})]

    summary = summarize_runs(runs)

    assert summary["results"]["dtd"]["accuracy_mean"] == pytest.approx(44.0)
    assert summary["results"]["dtd"]["accuracy_std"] == pytest.approx(np.std([40, 44, 48], ddof=1))
    assert summary["results"]["imagenet"] == pytest.approx(
        {
            "accuracy_mean": 71.0,
            "accuracy_std": math.sqrt(2),
            "macro_f1_mean": 71.0,
            "macro_f1_std": math.sqrt(2),
            "num_runs": 2,
        }
    )
    assert "harmonic_mean" not in summary


def test_summarize_runs_summarizes_zero_shot_when_every_run_has_it():
    summary = summarize_runs([_run(1, 90, 60, zero_shot=(70, 74)), _run(2, 92, 62, zero_shot=(72, 76))])
    assert summary["zero_shot"]["results"]["base"]["accuracy_mean"] == pytest.approx(71.0)
    assert summary["zero_shot"]["harmonic_mean"] == pytest.approx(harmonic_mean(71, 75))

    assert "zero_shot" not in summarize_runs([_run(1, 90, 60, zero_shot=(70, 74)), _run(2, 92, 62)])


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        ([], "empty"),
        ([_run(1, 90, 60), _run(2, 90, 60, dataset="dtd")], r"differ in more than the seed.*dataset: 'eurosat'"),
        ([_run(1, 90, 60), _run(1, 91, 61)], r"seed\(s\) \[1\]"),
        ([{"dataset": "x", "setting": "all"}], r"runs\[0\]: The metrics lack the required field\(s\).*'results'"),
        ([_run(1, 90, 60), {**_run(2, 90, 60), "base_model": "other"}], r"base_model: 'clip' \(seed 1\), 'other'"),
    ],
)
def test_summarize_runs_rejects_runs_that_cannot_be_averaged(runs, message):
    with pytest.raises(ValueError, match=message):
        summarize_runs(runs)


def test_summarize_runs_refuses_runs_that_differ_in_an_option_naming_it():
    first = {**_run(1, 90, 60), "train_config": {"lr": 0.0035, "epochs": 5, "output_dir": "a", "num_workers": 8}}
    second = {**_run(2, 92, 62), "train_config": {"lr": 0.002, "epochs": 5, "output_dir": "b", "num_workers": 2}}
    with pytest.raises(ValueError, match=r"not averaged: lr: 0\.0035 \(seed 1\), 0\.002 \(seed 2\)\.") as error:
        summarize_runs([first, second])
    assert "output_dir" not in str(error.value) and "num_workers" not in str(error.value)  # not part of a result
    # the same options but the seed, the folder and the workers: averaged
    second["train_config"]["lr"] = 0.0035
    assert summarize_runs([first, second])["num_runs"] == 2


def test_summarize_runs_of_one_seed_has_no_standard_deviation():
    summary = summarize_runs([_run(1, 90, 60)])
    assert summary["results"]["base"]["accuracy_std"] is None and summary["results"]["base"]["accuracy_mean"] == 90


def test_run_metrics_record_the_split_and_older_files_get_it_from_their_options():
    run = RunMetrics.from_dict({**_run(1, 90, 60), "split_source": "hub:timm/eurosat-rgb:train/test"})
    assert run.to_dict()["split_source"] == "hub:timm/eurosat-rgb:train/test"
    assert run_split_source(run) == "hub:timm/eurosat-rgb:train/test"
    older = RunMetrics.from_dict({**_run(1, 90, 60), "train_config": {"dataset_name": "timm/eurosat-rgb"}})
    assert run_split_source(older) == "hub:timm/eurosat-rgb:train/test"
    assert run_split_source(RunMetrics.from_dict(_run(1, 90, 60))) == "coop"  # a CoOp benchmark's name
    hub_food = {**_run(1, 90, 60, dataset="food101"), "train_config": {"dataset_name": "food101"}}
    coop_food = {**_run(2, 90, 60, dataset="food101"), "train_config": {"dataset": "food101"}}
    with pytest.raises(ValueError, match=r"split_source: 'hub:food101:train/test' \(seed 1\), 'coop' \(seed 2\)"):
        summarize_runs([hub_food, coop_food])  # the same name, two splits: never averaged


def test_method_key_and_title_tell_methods_apart():
    def run(variant, **options):
        peft = {"variant": variant, "n_ctx": options.pop("n_ctx", 2), "depth": options.pop("depth", 9)}
        peft.update(class_names=["a"], base_model_name_or_path="/tmp/x")  # not part of the method
        return RunMetrics.from_dict({**_run(1, 90, 60), "peft_config": peft, "train_config": options})

    maple, ivlp = method_key(run("maple")), method_key(run("ivlp", n_ctx=4))
    assert maple != ivlp and "class_names" not in maple and "base_model_name_or_path" not in maple
    assert method_title(maple) == "MaPLe (2 tokens, depth 9) · base-to-novel · `clip` · CoOp splits"
    assert method_title(ivlp).startswith("IVLP (4 tokens, depth 9)")
    src = method_key(run("ivlp", n_ctx=4, text_weight=25, image_weight=10, logits_weight=1, gpa_mean=15, gpa_std=1))
    assert method_title(src).startswith("PromptSRC (4 tokens, depth 9, losses 25/10/1, GPA 15±1)")
    assert method_title(method_key(run("language", n_ctx=4, depth=1))).startswith("CoOp (4 tokens, depth 1)")
    assert method_title(method_key(run("maple", text_weight=25))).startswith("MaPLe + SRC")
    # two keys with the same title get the option that tells them apart
    other = {**maple, "prompt_init_std": 0.5}
    assert method_title(maple, [maple, other]).endswith("prompt_init_std=None")


def test_build_run_metrics_fills_versions_and_harmonic_means():
    base = classification_metrics([0, 1], [0, 1], ["a", "b"])
    novel = classification_metrics([0, 0], [0, 1], ["c", "d"])

    metrics = build_run_metrics(
        base_model="openai/clip-vit-base-patch16",
        dataset="eurosat",
        setting="base2novel",
        seed=1,
        num_shots=16,
        results={"base": base, "novel": novel},
        train_config={"lr": 0.0035},
        peft_config={"n_ctx": 2},
        time_seconds=1.5,
        zero_shot_results={"base": novel, "novel": novel},
    )

    assert metrics["harmonic_mean"] == pytest.approx(harmonic_mean(100.0, 50.0))
    assert metrics["zero_shot"]["harmonic_mean"] == pytest.approx(50.0)
    assert metrics["versions"]["torch"] == torch.__version__
    assert set(metrics["versions"]) == {"torch", "transformers", "peft", "accelerate"}
    assert metrics["maple_peft_version"]
    assert RunMetrics.from_dict(metrics).harmonic_mean == metrics["harmonic_mean"]


def test_run_metrics_from_dict_names_the_bad_field():
    result = classification_metrics([0, 1], [0, 1], ["a", "b"])
    good = {"base_model": "m", "dataset": "d", "setting": "all", "seed": 1, "results": {"test": result}}
    assert RunMetrics.from_dict(good).results == {"test": result}

    with pytest.raises(ValueError, match="setting='base-to-novel' is not one of"):
        RunMetrics.from_dict({**good, "setting": "base-to-novel"})
    with pytest.raises(ValueError, match="'seed'"):
        RunMetrics.from_dict({k: v for k, v in good.items() if k != "seed"})
    with pytest.raises(ValueError, match=r"results\['test'\]\['accuracy'\]=150"):
        RunMetrics.from_dict({**good, "results": {"test": {**result, "accuracy": 150}}})
    with pytest.raises(ValueError, match=r"results\['test'\] has no 'accuracy'"):
        RunMetrics.from_dict({**good, "results": {"test": {"macro_f1": 50.0}}})
    with pytest.raises(ValueError, match="lack a 'base' or a 'novel'"):
        RunMetrics.from_dict({**good, "harmonic_mean": 50.0})
    two = {**good, "results": {"base": result, "novel": result}}
    assert RunMetrics.from_dict(two).harmonic_mean == pytest.approx(100.0)  # derived when the file has none
    with pytest.raises(ValueError, match=r"metrics\['harmonic_mean'\]=50.0 but 2BN/\(B\+N\) of the results is 100.0"):
        RunMetrics.from_dict({**two, "harmonic_mean": 50.0})
    zero_shot = {"results": {"base": result, "novel": {**result, "accuracy": 50.0}}, "harmonic_mean": 99.0}
    with pytest.raises(ValueError, match=r"\['zero_shot'\]\['harmonic_mean'\]=99.0"):
        RunMetrics.from_dict({**two, "zero_shot": zero_shot})


def test_run_metrics_round_trips_through_its_json_dict():
    base = classification_metrics([0, 1], [0, 1], ["a", "b"])
    novel = classification_metrics([0, 0], [0, 1], ["c", "d"])
    metrics = build_run_metrics(
        base_model="m", dataset="d", setting="base2novel", seed=3, num_shots=2, results={"base": base, "novel": novel}
    )
    assert RunMetrics.from_dict(metrics).to_dict() == metrics
    assert metrics["harmonic_mean"] == pytest.approx(harmonic_mean(100.0, 50.0))


def test_one_harmonic_mean_rule_needs_both_base_and_novel():
    assert base_novel_harmonic_mean({"base": 90.0, "novel": 60.0}) == pytest.approx(72.0)
    assert base_novel_harmonic_mean({"base": 90.0, "test": 60.0}) is None
